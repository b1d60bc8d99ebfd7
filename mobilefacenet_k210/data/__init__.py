"""Raw photos -> aligned crops -> balanced shards -> tf.data batches."""

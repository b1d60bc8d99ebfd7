"""On the board: package a kmodel for kflash (``kfpkg``), flash it (``flash``), write the CanMV script
and its generated config (``sd_card``, ``canmv_face_id.py``), and the host twin of the board's
enroll/identify (``gallery``), all on the board's score scale (``score``).
"""

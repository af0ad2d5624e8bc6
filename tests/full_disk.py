"""A file stand-in for tests of what a full disk does to writers."""

import errno
import os


class FullDiskFile:
    """Wraps a file; its writes fail with ENOSPC once ``room`` bytes are written."""

    def __init__(self, file, room: int):
        self.file, self.room = file, room

    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)

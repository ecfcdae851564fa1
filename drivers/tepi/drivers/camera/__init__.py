"""Cameras: JPEG snapshots and streams, image health checks, privacy masks and re-encoding.

``vision`` holds the image processing: pure, synchronous functions on numpy arrays (OpenCV),
which the driver runs in a worker thread. It imports numpy and cv2, so nothing here is
imported until the first camera device is.
"""

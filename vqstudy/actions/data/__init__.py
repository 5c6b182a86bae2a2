"""Trajectory data: loaders (LIBERO/robomimic hdf5, LeRobot parquet, robosuite demos), episode checks,
quantile normalization, chunking and episode-level splits."""

"""mbmpo_ros: the ROS 2 side of mbmpo (nodes, codecs, QoS) and the ``mbmpo`` command line."""

"""mbmpo_core: the MB-MPO algorithm (dynamics ensemble, policy, meta-optimization, storage, config).

Never imports rclpy or ``sim``.
"""

__version__ = "0.1.0"

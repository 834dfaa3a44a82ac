"""Every QoS profile of the mbmpo graph, in one place, and the rule that decides whether two of them connect.

DDS matches a publisher (offered QoS) with a subscription (requested QoS) only if the offer is at least as
strong as the request, policy by policy:

- reliability: RELIABLE offer serves RELIABLE and BEST_EFFORT requests; a BEST_EFFORT offer serves only
  BEST_EFFORT. A best-effort publisher and a reliable subscriber never connect, silently.
- durability: TRANSIENT_LOCAL offer serves TRANSIENT_LOCAL and VOLATILE; a VOLATILE offer serves only
  VOLATILE (a latched subscriber cannot be served by a publisher that keeps no history).
- deadline: the offered period must be <= the requested one (0 = infinite).
- liveliness: the offered kind must be at least as strict (AUTOMATIC < MANUAL_BY_TOPIC) and the offered lease
  <= the requested one (0 = infinite).
History and depth never prevent a match; they are local to each side.

Profiles:

========================  ===========  ===============  ==========  =============================================
name                      reliability  durability       history     why
========================  ===========  ===============  ==========  =============================================
POLICY_QOS                RELIABLE     TRANSIENT_LOCAL  KEEP_LAST 1 latched: a controller that starts late still
                                                                    gets the newest policy, and only the newest
TRANSITIONS_QOS           RELIABLE     VOLATILE         KEEP_ALL    no loss under bursts: unacknowledged batches
                                                                    wait on both sides instead of being dropped
                                                                    (KEEP_LAST 100 lost 72-78 % of a burst); old
                                                                    data is not replayed
STATE_QOS (subscriber)    BEST_EFFORT  VOLATILE         KEEP_LAST 1 connects to RELIABLE publishers (ros2_control's
                                                                    joint_state_broadcaster: RELIABLE, depth 10)
                                                                    and BEST_EFFORT ones (sensor-data drivers);
                                                                    a control loop wants the freshest state only
STATE_PUB_QOS             RELIABLE     VOLATILE         KEEP_LAST   what joint_state_broadcaster offers, so that
                                                        10          reliable subscribers (robot_state_publisher,
                                                                    rviz) also connect to ``sim_robot``
COMMAND_QOS               RELIABLE     VOLATILE         KEEP_LAST 1 ros2_control command controllers subscribe
                                                                    RELIABLE; depth 1 so a stale action is never
                                                                    queued behind a fresh one
DIAGNOSTICS_QOS           RELIABLE     VOLATILE         KEEP_LAST   matches diagnostic_updater / aggregator
                                                        10
ACK_QOS                   RELIABLE     TRANSIENT_LOCAL  KEEP_LAST 1 latched per robot: a controller (re)joining
                                                                    gets the learner's newest account of what
                                                                    is stored, and only the newest
========================  ===========  ===============  ==========  =============================================
"""

from __future__ import annotations

from rclpy.duration import Duration
from rclpy.qos import DurabilityPolicy, HistoryPolicy, LivelinessPolicy, QoSProfile, ReliabilityPolicy

_AUTO = LivelinessPolicy.AUTOMATIC

def _profile(reliability: ReliabilityPolicy, durability: DurabilityPolicy, depth: int) -> QoSProfile:
    # Liveliness explicit: every policy resolved, so compatibility checks need no middleware defaults.
    return QoSProfile(reliability=reliability, durability=durability, history=HistoryPolicy.KEEP_LAST,
                      liveliness=_AUTO, depth=depth)


_RELIABLE, _BEST_EFFORT = ReliabilityPolicy.RELIABLE, ReliabilityPolicy.BEST_EFFORT
_VOLATILE, _LATCHED = DurabilityPolicy.VOLATILE, DurabilityPolicy.TRANSIENT_LOCAL

POLICY_QOS = _profile(_RELIABLE, _LATCHED, depth=1)
TRANSITIONS_QOS = QoSProfile(reliability=_RELIABLE, durability=_VOLATILE, history=HistoryPolicy.KEEP_ALL,
                             liveliness=_AUTO, depth=1)  # depth is ignored under KEEP_ALL
STATE_QOS = _profile(_BEST_EFFORT, _VOLATILE, depth=1)
STATE_PUB_QOS = _profile(_RELIABLE, _VOLATILE, depth=10)
COMMAND_QOS = _profile(_RELIABLE, _VOLATILE, depth=1)
DIAGNOSTICS_QOS = _profile(_RELIABLE, _VOLATILE, depth=10)
ACK_QOS = _profile(_RELIABLE, _LATCHED, depth=1)

_LIVELINESS_STRENGTH = {LivelinessPolicy.AUTOMATIC: 0, LivelinessPolicy.MANUAL_BY_TOPIC: 1}
_RESOLVED = {
    "reliability": (ReliabilityPolicy.RELIABLE, ReliabilityPolicy.BEST_EFFORT),
    "durability": (DurabilityPolicy.VOLATILE, DurabilityPolicy.TRANSIENT_LOCAL),
}


def _nanoseconds(value: Duration) -> float:
    """Period in ns, with 0 (the ROS default) meaning infinite, as DDS treats it."""
    ns = value.nanoseconds
    return float("inf") if ns == 0 else float(ns)


def compatible(pub_qos: QoSProfile, sub_qos: QoSProfile) -> bool:
    """True if a publisher offering ``pub_qos`` connects to a subscription requesting ``sub_qos``.

    Applies the rules in the module docstring. Profiles must be resolved (no SYSTEM_DEFAULT / BEST_AVAILABLE
    reliability or durability): what those become depends on the middleware, so ValueError is raised.
    """
    for name, allowed in _RESOLVED.items():
        for side, profile in (("publisher", pub_qos), ("subscription", sub_qos)):
            if getattr(profile, name) not in allowed:
                raise ValueError(f"{side} {name} {getattr(profile, name).name} is not resolved")
    if pub_qos.reliability == ReliabilityPolicy.BEST_EFFORT and sub_qos.reliability == ReliabilityPolicy.RELIABLE:
        return False
    if pub_qos.durability == DurabilityPolicy.VOLATILE and sub_qos.durability == DurabilityPolicy.TRANSIENT_LOCAL:
        return False
    if _nanoseconds(pub_qos.deadline) > _nanoseconds(sub_qos.deadline):
        return False
    pub_live = _LIVELINESS_STRENGTH.get(pub_qos.liveliness, 0)
    sub_live = _LIVELINESS_STRENGTH.get(sub_qos.liveliness, 0)
    if pub_live < sub_live:
        return False
    return _nanoseconds(pub_qos.liveliness_lease_duration) <= _nanoseconds(sub_qos.liveliness_lease_duration)

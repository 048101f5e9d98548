"""planner: plan steps -> action goals, grounding, execution monitor, closed-loop runner, reports,
``emu-guide demo`` and ``emu-guide bench``. Never imports rclpy (the ROS layer wraps it)."""

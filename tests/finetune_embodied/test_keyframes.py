"""Keyframes from proprioception vs the true subtask ends of simulated episodes."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import sim_envs  # noqa: F401  (registers the env ids)
from finetune_embodied.keyframes import KeyframeConfig, detect_keyframes, keyframes_from_state, match_keyframes


def scripted_rollout(env_id: str, seed: int) -> tuple[np.ndarray, list[int]]:
    """Run the ground-truth plan through the env's own skill waypoints one low-level step at a time;
    returns the states (T, 5) and the true subtask ends (the frame each step's last waypoint is reached)."""
    env = gym.make(env_id, resolution=64)
    obs, _ = env.reset(seed=seed)
    u = env.unwrapped
    states, ends = [obs["state"]], []
    for step in u.ground_truth_plan():
        for wp in u.skill_waypoints(step.goal):
            for _ in range(300):
                if u.at_waypoint(wp):
                    break
                obs, *_ = env.step(u.waypoint_action(wp))
                states.append(obs["state"])
        assert u.check_step(step.goal)
        ends.append(len(states) - 1)
    env.close()
    return np.asarray(states), ends


@pytest.mark.parametrize("env_id", ["sim_envs/TableClear-v0"])
def test_keyframes_match_true_subtask_ends(env_id):
    tp = detected = actual = 0
    for seed in range(3):
        states, ends = scripted_rollout(env_id, seed)
        keys = keyframes_from_state(states, ["ee_x", "ee_y", "ee_z", "gripper", "holding"])
        score = match_keyframes(keys, ends, tolerance=2)
        tp, detected, actual = tp + score.true_positives, detected + score.detected, actual + score.actual
    precision, recall = tp / detected, tp / actual
    print(f"{env_id}: precision {precision:.2f} recall {recall:.2f} over {actual} subtask ends (tolerance 2 frames)")
    assert precision >= 0.9 and recall >= 0.9


def test_gripper_and_motion_cues():
    # Descend, close, lift, pause; carry, open, lift: two subtasks ending at the lifts' arrivals.
    z = [0.2, 0.15, 0.1, 0.1, 0.15, 0.2, 0.2, 0.2]
    x = [0.0] * 6 + [0.0, 0.0]
    path = [(x[i], 0.0, z[i]) for i in range(len(z))]
    path += [(0.05 * k, 0.0, 0.2) for k in range(1, 5)] + [(0.2, 0.0, 0.1), (0.2, 0.0, 0.1), (0.2, 0.0, 0.2)] + [(0.2, 0.0, 0.2)] * 3
    grip = [0, 0, 0, 1, 1, 1, 1, 1] + [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    keys = detect_keyframes(np.array(grip), np.array(path))
    assert keys == [5, 14, 17]  # lift after the grasp ends at 5; lift after the release at 14; the last frame
    assert detect_keyframes(np.array(grip), np.array(path), KeyframeConfig(min_gap=4)) == [5, 17]  # merged
    # Only releases end subtasks (e.g. one pick-and-place step per object):
    assert detect_keyframes(np.array(grip), np.array(path), KeyframeConfig(events=("open",))) == [14, 17]
    with pytest.raises(ValueError, match="ee_pos must be"):
        detect_keyframes(np.zeros(5), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="events"):
        KeyframeConfig(events=("wiggle",))


def test_match_keyframes_is_one_to_one():
    s = match_keyframes([10, 11, 30], [10, 20, 31], tolerance=1)
    assert (s.true_positives, s.precision, s.recall) == (2, 2 / 3, 2 / 3)


def test_keyframes_on_expert_episodes_with_mistakes():
    """Recorded-style episodes (expert with injected mistakes/recoveries): boundaries = label changes."""
    from sim_envs.expert import ScriptedExpert

    tp = detected = actual = mistakes = 0
    for seed in (0, 1):
        env = gym.make("sim_envs/TableClear-v0", resolution=64)
        obs, _ = env.reset(seed=seed)
        expert = ScriptedExpert(env, mistake_rate=0.3, seed=seed)
        states, labels = [obs["state"]], []
        while not expert.done:
            action, _, text = expert.next_action()
            obs, *_ = env.step(action)
            states.append(obs["state"])
            labels.append(text)
        env.close()
        mistakes += expert.mistakes
        labels = [labels[0]] + labels  # frame t > 0 carries the label of the action that led to it
        ends = [t for t in range(len(labels)) if t == len(labels) - 1 or labels[t + 1] != labels[t]]
        keys = keyframes_from_state(np.asarray(states), ["ee_x", "ee_y", "ee_z", "gripper", "holding"])
        s = match_keyframes(keys, ends, tolerance=2)
        tp, detected, actual = tp + s.true_positives, detected + s.detected, actual + s.actual
    print(f"with mistakes: precision {tp / detected:.2f} recall {tp / actual:.2f} over {actual} subtask ends")
    assert mistakes > 0
    assert tp / detected >= 0.85 and tp / actual >= 0.85

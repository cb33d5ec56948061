"""The Pusher's idempotence: a model already pushed is found by its fingerprint, and what a
killed push left behind is removed."""

import json
import shutil

import tensorflow as tf

from components.pusher import model_fingerprint, pushed_version, remove_stale_temporaries


def _saved_model(path, value):
    module = tf.Module()
    module.v = tf.Variable(value)
    module.f = tf.function(lambda: module.v * 2.0, input_signature=[])
    tf.saved_model.save(module, str(path))
    return str(path)


def test_fingerprint_follows_the_content_not_the_location(tmp_path):
    a = _saved_model(tmp_path / "a", 1.0)
    copy = str(tmp_path / "copy")
    shutil.copytree(a, copy)
    other = _saved_model(tmp_path / "b", 2.0)
    assert model_fingerprint(a) == model_fingerprint(copy)
    assert model_fingerprint(a) != model_fingerprint(other)


def test_a_pushed_model_is_found_and_debris_is_removed(tmp_path):
    destination = tmp_path / "serving"
    (destination / "1700000000").mkdir(parents=True)
    (destination / "1700000000" / "manifest.json").write_text(
        json.dumps({"model_version": 1700000000, "source": {"model_fingerprint": "abc"}}))
    (destination / "1700000005").mkdir()  # a bundle without a manifest is not a push
    (destination / ".tmp-1700000009-0123456789ab" / "user_tower").mkdir(parents=True)
    (destination / ".old-1700000000-0123456789ab").mkdir()
    assert pushed_version(str(destination), "abc") == 1700000000
    assert pushed_version(str(destination), "other") is None
    assert pushed_version(str(tmp_path / "nowhere"), "abc") is None
    removed = remove_stale_temporaries(str(destination))
    assert removed == [".old-1700000000-0123456789ab", ".tmp-1700000009-0123456789ab"]
    assert sorted(p.name for p in destination.iterdir()) == ["1700000000", "1700000005"]
    assert remove_stale_temporaries(str(destination)) == []

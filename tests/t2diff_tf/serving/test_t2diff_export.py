"""T2Diff itself (diffusion sampler, attention) exports and serves like the in-process model."""

import numpy as np
import tensorflow as tf

from t2diff_tf.layers.diffusion import DiffusionConfig
from t2diff_tf.layers.schedules import ScheduleConfig
from t2diff_tf.layers.unet import UNetConfig
from t2diff_tf.models import T2DiffConfig, build_model
from t2diff_tf.serving import rest
from t2diff_tf.serving import signatures as S
from t2diff_tf.serving.brute_force import numpy_top_k
from t2diff_tf.serving.export import export_for_serving
from t2diff_tf.serving.warmup import synthetic_query_features

from .conftest import SPEC


def test_t2diff_with_deterministic_sampler_serves_its_query_embeddings(tmp_path):
    num_items = 200
    diffusion = DiffusionConfig(schedule=ScheduleConfig(num_steps=5),
                                approximator=UNetConfig(filters=(8, 16), step_embedding_dim=8),
                                sampler="fast", sampler_steps=3)
    model = build_model("t2diff", T2DiffConfig(
        embedding_dim=8, session_size=4, diffusion=diffusion, attention_units=(8,),
        user_tower_units=(16,), item_tower_units=(16,)), num_items=num_items, example_spec=SPEC)
    # Untrained: tracing T2Diff's training step costs more than this whole check, and the
    # export only needs its weights (the two-tower fixture covers a trained model).
    vocabulary = tmp_path / "vocab.txt"
    vocabulary.write_text("items\n")
    result = export_for_serving(model, SPEC, str(tmp_path / "serving"), str(vocabulary),
                                version=1, k=10, scann=None)
    queries = {n: v for n, v in synthetic_query_features(SPEC, num_items, 8, seed=4).items()}
    expected = model.query_embeddings({n: tf.constant(v) for n, v in queries.items()}).numpy()
    request = {"inputs": {n: np.asarray(v).tolist() for n, v in queries.items()}}

    user_tower = tf.saved_model.load(result.user_tower_path)
    np.testing.assert_allclose(np.asarray(rest.predict(user_tower, request)["outputs"]),
                               expected, rtol=1e-4, atol=1e-5)
    top_k = tf.saved_model.load(result.top_k_path)
    ids = np.asarray(rest.predict(top_k, request)["outputs"][S.ITEM_IDS])
    _, rows = numpy_top_k(expected, model.corpus_embeddings().numpy(), 10)
    np.testing.assert_array_equal(ids, rows + 1)
    assert result.manifest.model_config["class"] == "T2Diff"

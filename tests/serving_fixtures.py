"""A pushed Amazon fine-food model for the serving tests, trained once.

The client, batch-inference and deploy tests need a real pushed SavedModel,
not its metrics, so the model trains for two epochs on the bundled sample and
is pushed without the Evaluator. It is built once per pytest session under
the session's base temp folder and shared by every module that uses it.
"""

import dataclasses
import os

import pipeline
from components import pusher
from components import trainer
from components.config import load_config

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AMAZON_CONFIG = os.path.join(REPO_ROOT, 'configs', 'amazon_fine_food.yaml')
MODEL_NAME = 'amazon_fine_food'


def pushed_serving_dir(tmp_path_factory) -> str:
  """The serving folder holding `amazon_fine_food/1` and its models.config."""
  root = tmp_path_factory.getbasetemp() / 'pushed_amazon_fine_food'
  serving_dir = str(root / 'models')
  version_dir = os.path.join(serving_dir, MODEL_NAME, '1')
  if os.path.isfile(os.path.join(version_dir, 'saved_model.pb')):
    return serving_dir

  config = load_config(AMAZON_CONFIG)
  config = dataclasses.replace(config, trainer=dataclasses.replace(
      config.trainer, epochs=2))
  summary = pipeline.run_pipeline(config, None, str(root / 'runs'),
                                  serving_dir, [], until='trainer')
  trainer_dir = next(c['output_dir'] for c in summary['components']
                     if c['component'] == 'trainer')
  model_dir = os.path.join(trainer_dir, trainer.SERVING_MODEL_DIR)
  pusher.run_pusher(model_dir, True, [], serving_dir, MODEL_NAME,
                    str(root / 'pusher'))
  return serving_dir

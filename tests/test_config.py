"""Config loading: the shipped configs parse, and bad values name the key."""

import os

import pytest

from components.config import ConfigError, load_config, parse_config

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINIMAL = {
    'pipeline_name': 'p',
    'data': {'adapter': 'generic', 'path': 'x.csv'},
    'features': [{'name': 'text', 'type': 'text'}],
    'tasks': [{'name': 'topic', 'type': 'multiclass', 'label': 'topic'}],
}


@pytest.mark.parametrize('name', ['amazon_fine_food', 'mind', 'generic_csv',
                                  'movielens'])
def test_shipped_config_loads(name):
  config = load_config(os.path.join(REPO_ROOT, 'configs', f'{name}.yaml'))
  assert config.model_name == name


def test_defaults_fill_in():
  config = parse_config(MINIMAL)
  assert config.model_name == 'p'
  assert config.trainer.optimizer == 'sgd'
  assert config.task('topic').main_metric == 'macro_f1'


def _error(raw):
  with pytest.raises(ConfigError) as info:
    parse_config(raw, source='my.yaml')
  return str(info.value)


def test_unknown_key_named():
  message = _error({**MINIMAL, 'trainer': {'epocs': 3}})
  assert 'my.yaml' in message
  assert 'epocs' in message
  assert 'epochs' in message


def test_bad_trunk_named():
  message = _error({**MINIMAL, 'model': {'trunk': 'gru'}})
  assert "'gru'" in message
  assert 'transformer' in message


def test_binary_task_needs_positive_class():
  message = _error({**MINIMAL, 'tasks': [
      {'name': 'click', 'type': 'binary', 'label': 'click',
       'classes': ['0', '1']}]})
  assert 'positive_class' in message


def test_group_metric_needs_group_key():
  message = _error({**MINIMAL, 'tasks': [
      {'name': 'click', 'type': 'binary', 'label': 'click',
       'classes': ['0', '1'], 'positive_class': '1',
       'main_metric': 'group_auc'}]})
  assert 'group_key' in message


def test_split_fractions_checked():
  message = _error({**MINIMAL, 'split': {'eval_fraction': 0.9,
                                         'validation_fraction': 0.2}})
  assert 'eval_fraction=0.9' in message


def test_missing_file_named(tmp_path):
  path = str(tmp_path / 'absent.yaml')
  with pytest.raises(ConfigError, match='absent.yaml'):
    load_config(path)

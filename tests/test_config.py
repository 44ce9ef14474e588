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


def test_significant_lead_flag_must_be_boolean():
  message = _error({**MINIMAL,
                    'evaluator': {'require_significant_lead': 'yes'}})
  assert message.endswith('`evaluator.require_significant_lead` must be '
                          "true or false, got 'yes'.")


def test_missing_file_named(tmp_path):
  path = str(tmp_path / 'absent.yaml')
  with pytest.raises(ConfigError, match='absent.yaml'):
    load_config(path)


RETRIEVAL = {
    'pipeline_name': 'r',
    'data': {'adapter': 'movielens', 'path': '.'},
    'features': [{'name': 'user_id', 'type': 'categorical'},
                 {'name': 'item_id', 'type': 'categorical'},
                 {'name': 'title', 'type': 'text'}],
    'tasks': [{'name': 'retrieval', 'type': 'retrieval', 'label': 'item_id',
               'query_key': 'user_id', 'query_features': ['user_id'],
               'candidate_features': ['item_id', 'title']}],
}


def _with_task(**changes):
  task = {**RETRIEVAL['tasks'][0], **changes}
  return {**RETRIEVAL, 'tasks': [task]}


def test_retrieval_defaults():
  task = parse_config(RETRIEVAL).task('retrieval')
  assert task.main_metric == 'top_100_accuracy'
  assert task.candidate_id == 'item_id'
  assert task.logq_correction
  assert task.remove_accidental_hits


def test_retrieval_feature_in_no_tower_named():
  message = _error(_with_task(candidate_features=['item_id']))
  assert "['title']" in message
  assert 'neither' in message


def test_retrieval_text_in_query_tower_rejected():
  message = _error(_with_task(query_features=['user_id', 'title'],
                              candidate_features=['item_id']))
  assert "['title']" in message
  assert 'candidate' in message


def test_retrieval_label_must_be_candidate_id():
  message = _error(_with_task(label='user_id'))
  assert "'user_id'" in message
  assert "'item_id'" in message


def test_retrieval_top_k_above_max_k_rejected():
  message = _error(_with_task(top_ks=[10, 500], max_k=100))
  assert '500' in message
  assert 'max_k' in message


def test_multilabel_needs_classes():
  message = _error({**MINIMAL, 'tasks': [
      {'name': 'genres', 'type': 'multilabel', 'label': 'genres'}]})
  assert "'genres'" in message
  assert 'classes' in message


def test_multilabel_main_metric_default():
  config = parse_config({**MINIMAL, 'tasks': [
      {'name': 'genres', 'type': 'multilabel', 'label': 'genres',
       'classes': ['a', 'b']}]})
  assert config.task('genres').main_metric == 'mean_average_precision'


def test_unlabelled_when_set_must_be_a_feature():
  message = _error({**MINIMAL, 'tasks': [
      {'name': 'topic', 'type': 'multiclass', 'label': 'topic',
       'unlabelled_when_set': 'user'}]})
  assert "'user'" in message


def test_history_parsed():
  config = parse_config({**RETRIEVAL, 'history': {'max_length': 20}})
  assert config.history.max_length == 20
  assert config.history.user_key == 'user_id'
  assert parse_config(RETRIEVAL).history is None

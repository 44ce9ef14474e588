"""Tokenization of scripts written without spaces, and a model on top."""

import json
import os

import pytest
import tensorflow as tf

import pipeline
from components.config import parse_config
from models.tokenization import tokenize

CHINESE_SPORTS = [
    '国家队在决赛中以三比一击败对手赢得冠军',
    '球迷在体育场为足球比赛欢呼',
    '篮球运动员在比赛最后一秒投篮得分',
    '马拉松比赛吸引了上万名跑步爱好者参加',
    '网球选手在公开赛中获得第一个冠军',
    '足球教练宣布了新赛季的球队名单',
]
CHINESE_FINANCE = [
    '央行宣布下调利率以支持经济增长',
    '股市今天上涨，银行股表现强劲',
    '公司公布季度利润超过市场预期',
    '投资者担心通货膨胀会影响债券价格',
    '外汇市场上美元兑人民币汇率走高',
    '银行发放的贷款规模本月明显增加',
]
JAPANESE_SPORTS = [
    'サッカー日本代表が試合に勝ちました',
    '野球の選手が決勝でホームランを打った',
    'マラソン大会に多くのランナーが参加した',
    'テニスの大会で新しい王者が誕生した',
    'バスケットボールの試合は延長戦になった',
    '水泳の選手が世界記録を更新した',
]
JAPANESE_FINANCE = [
    '日本銀行が金利を据え置くと発表した',
    '株価が上昇し投資家の期待が高まった',
    '円安が進み輸出企業の利益が増えた',
    '銀行の貸出金利が少し上がった',
    '会社の決算で売上と利益が伸びた',
    '債券市場で長期金利が低下した',
]


def _decode(tokens):
  return [[t.decode('utf-8') for t in row] for row in tokens.to_list()]


@pytest.mark.parametrize('sentence', [CHINESE_SPORTS[0], JAPANESE_SPORTS[0],
                                      CHINESE_FINANCE[1], JAPANESE_FINANCE[1]])
def test_cjk_sentence_gives_many_tokens(sentence):
  tokens = _decode(tokenize(tf.constant([sentence])))[0]
  assert len(set(tokens)) >= 5, f'{sentence!r} gave only {tokens}'


def test_chinese_characters_are_tokens():
  tokens = _decode(tokenize(tf.constant(['东京是日本的首都。'])))[0]
  assert tokens == ['东', '京', '是', '日', '本', '的', '首', '都']


def test_cjk_bigrams():
  tokens = _decode(tokenize(tf.constant(['日本的首都']), cjk='bigrams'))[0]
  assert tokens == ['日本', '本的', '的首', '首都']


def test_mixed_script_splits_at_script_change():
  tokens = _decode(tokenize(tf.constant(['iPhone发布 Ｆｕｌｌ, OK!'])))[0]
  assert tokens == ['iphone', '发', '布', 'full', 'ok']


def test_thai_gives_character_trigrams():
  tokens = _decode(tokenize(tf.constant(['ภาษาไทย'])))[0]
  assert tokens == ['ภาษ', 'าษา', 'ษาไ', 'าไท', 'ไทย']


def test_short_thai_word_kept_whole():
  tokens = _decode(tokenize(tf.constant(['ไท'])))[0]
  assert tokens == ['ไท']


def test_empty_text_gives_no_tokens():
  assert _decode(tokenize(tf.constant(['', '  ...  ']))) == [[], []]


def _write_topics(path):
  rows = []
  topics = [('sports', CHINESE_SPORTS + JAPANESE_SPORTS),
            ('finance', CHINESE_FINANCE + JAPANESE_FINANCE)]
  # Each sentence appears several times with a distinct id, so every split
  # contains both topics in both languages.
  for copy in range(4):
    for topic, sentences in topics:
      for index, sentence in enumerate(sentences):
        rows.append({'id': f'{topic}-{index}-{copy}', 'headline': sentence,
                     'topic': topic})
  with open(path, 'w', encoding='utf-8') as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False) + '\n')


def test_model_separates_cjk_topics(tmp_path):
  data_path = tmp_path / 'headlines.jsonl'
  _write_topics(data_path)
  config = parse_config({
      'pipeline_name': 'cjk_topics',
      'data': {'adapter': 'generic', 'path': str(data_path),
               'format': 'jsonl',
               'columns': {'example_id': 'id', 'headline': 'headline',
                           'topic': 'topic'}},
      'features': [{'name': 'headline', 'type': 'text'}],
      'text': {'max_tokens': 32, 'frequency_threshold': 1, 'top_k': 1000},
      'tasks': [{'name': 'topic', 'type': 'multiclass', 'label': 'topic',
                 'classes': ['sports', 'finance']}],
      'model': {'trunk': 'lstm', 'embedding_dim': 16, 'units': 16,
                'hidden_units': [16], 'dropout': 0.0},
      'trainer': {'batch_size': 8, 'epochs': 12, 'optimizer': 'adam',
                  'learning_rate': 0.01, 'early_stopping_patience': 12},
  }, source=str(tmp_path / 'cjk.yaml'))

  summary = pipeline.run_pipeline(config, None, str(tmp_path / 'runs'),
                                  str(tmp_path / 'serving'), [])

  metrics = summary['tasks']['topic']['metrics']
  assert metrics['accuracy'] >= 0.9, summary['tasks']['topic']
  assert summary['blessed'], summary['blessing_reasons']
  assert os.path.isdir(tmp_path / 'serving' / 'cjk_topics' / '1')

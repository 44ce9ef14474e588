"""Text tokenization with tensorflow-text ops, shared by Beam and serving.

Every op used here is a TensorFlow core op or a tensorflow-text op, so the
same graph runs inside tf.Transform on Beam and inside TensorFlow Serving.

Scripts written without spaces between words get smaller units: each Han,
Hiragana and Katakana character is a token (or overlapping bigrams), and
Thai, Lao, Khmer and Myanmar runs become character n-grams, since no
segmenter for them runs in the graph.
"""

import tensorflow as tf
import tensorflow_text as tf_text

_CJK_RUN = r'[\p{Han}\p{Hiragana}\p{Katakana}]+'
_SOUTHEAST_ASIAN_RUN = r'[\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}]+'
_PUNCTUATION_ONLY = r'[\p{P}]+'


def _expand_matching_tokens(tokens: tf.RaggedTensor, pattern: str,
                            width: int) -> tf.RaggedTensor:
  """Replace each token matching `pattern` by its character n-grams.

  A matching token shorter than `width` characters is kept whole.

  Args:
    tokens: [batch, (tokens)] strings.
    pattern: RE2 pattern a whole token must match.
    width: n-gram width in characters; 1 splits into characters.

  Returns:
    [batch, (tokens)] strings with the matching tokens expanded in place.
  """
  flat = tokens.flat_values
  chars = tf.strings.unicode_split(flat, 'UTF-8')
  if width == 1:
    grams = chars
  else:
    grams = tf_text.ngrams(
        chars, width, axis=-1,
        reduction_type=tf_text.Reduction.STRING_JOIN, string_separator='')
  expand = tf.logical_and(
      tf.strings.regex_full_match(flat, pattern), grams.row_lengths() > 0)

  kept_grams = tf.ragged.boolean_mask(
      grams, grams.with_flat_values(tf.gather(expand, grams.value_rowids())))
  whole = tf.RaggedTensor.from_tensor(tf.expand_dims(flat, -1))
  kept_whole = tf.ragged.boolean_mask(
      whole, whole.with_flat_values(tf.logical_not(expand)))
  per_token = tf.concat([kept_whole, kept_grams], axis=1)
  return tokens.with_flat_values(per_token).merge_dims(1, 2)


def tokenize(text: tf.Tensor, normalization: str = 'NFKC',
             lower_case: bool = True, cjk: str = 'characters',
             ngram_size: int = 3) -> tf.RaggedTensor:
  """Tokenize a batch of UTF-8 strings.

  Args:
    text: [batch] strings.
    normalization: Unicode normalization form, or '' for none.
    lower_case: fold case after normalization.
    cjk: `characters` or `bigrams` for Han and Kana runs.
    ngram_size: n-gram width for Thai, Lao, Khmer and Myanmar runs.

  Returns:
    [batch, (tokens)] strings, punctuation dropped.
  """
  if normalization:
    text = tf_text.normalize_utf8(text, normalization)
  if lower_case:
    text = tf_text.case_fold_utf8(text)

  # Splits on whitespace and on every change of script, so "iPhone发布"
  # gives a Latin token and a Han run.
  tokens = tf_text.UnicodeScriptTokenizer().tokenize(text)
  tokens = tf.ragged.boolean_mask(
      tokens, tf.logical_not(
          tf.strings.regex_full_match(tokens, _PUNCTUATION_ONLY)))

  tokens = _expand_matching_tokens(
      tokens, _CJK_RUN, 1 if cjk == 'characters' else 2)
  return _expand_matching_tokens(tokens, _SOUTHEAST_ASIAN_RUN, ngram_size)

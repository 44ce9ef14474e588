"""Transform: tf.Transform analysis and transformation on Beam.

Vocabularies and other full-pass statistics are computed on the train split
only, then the one transform graph is applied to every split. The graph is
saved beside the transformed examples, so the trainer can attach it to the
served model and serving runs exactly the transformation training saw.
"""

import logging
import os
import tempfile
from typing import Dict, List, NamedTuple, Optional

import apache_beam as beam
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2
from tensorflow_transform.tf_metadata import dataset_metadata
from tensorflow_transform.tf_metadata import metadata_io
from tfx_bsl.public import tfxio

from components import artifacts
from components import beam_options
from components.config import PipelineConfig
from models.preprocessing import make_preprocessing_fn

TRANSFORM_GRAPH_DIR = 'transform_graph'
TRANSFORMED_EXAMPLES_DIR = 'transformed_examples'
SPLITS = ('train', 'validation', 'eval')


class TransformResult(NamedTuple):
  """Paths written by the Transform component."""
  transform_graph_dir: str
  transformed_examples_dir: str
  counts: Dict[str, int]


def load_schema(schema_path: str) -> schema_pb2.Schema:
  with open(schema_path, encoding='utf-8') as f:
    return text_format.Parse(f.read(), schema_pb2.Schema())


def run_transform(config: PipelineConfig, examples_dir: str, schema_path: str,
                  output_dir: str,
                  beam_args: Optional[List[str]] = None) -> TransformResult:
  """Analyze the train split, then transform every split.

  Args:
    config: the pipeline config.
    examples_dir: ExampleGen's output, with one `Split-<name>/` folder each.
    schema_path: the raw-data schema (`schema.pbtxt`) from SchemaGen.
    output_dir: where the transform graph and transformed examples go.
    beam_args: Beam pipeline options, passed through unchanged.

  Returns:
    The written paths and the number of examples per split.
  """
  schema = load_schema(schema_path)
  graph_dir = os.path.join(output_dir, TRANSFORM_GRAPH_DIR)
  transformed_dir = os.path.join(output_dir, TRANSFORMED_EXAMPLES_DIR)
  temp_dir = tempfile.mkdtemp(prefix='tft-', dir=output_dir)
  preprocessing_fn = make_preprocessing_fn(config)

  split_sources = {
      split: tfxio.TFExampleRecord(
          file_pattern=artifacts.split_pattern(examples_dir, split),
          schema=schema,
          telemetry_descriptors=['mtlrec', 'Transform'])
      for split in SPLITS
  }
  options = beam_options.pipeline_options(beam_args)
  with beam.Pipeline(options=options) as pipeline:
    with tft_beam.Context(temp_dir=temp_dir, force_tf_compat_v1=False):
      raw = {
          split: pipeline | f'Read{split.title()}' >> source.BeamSource()
          for split, source in split_sources.items()
      }
      tensor_adapter_config = split_sources['train'].TensorAdapterConfig()
      transform_fn = ((raw['train'], tensor_adapter_config)
                      | 'AnalyzeTrain' >> tft_beam.AnalyzeDataset(
                          preprocessing_fn))
      _ = transform_fn | 'WriteTransformGraph' >> tft_beam.WriteTransformFn(
          graph_dir)

      for split in SPLITS:
        name = split.title()
        transformed = (((raw[split], tensor_adapter_config), transform_fn)
                       | f'Transform{name}' >> tft_beam.TransformDataset(
                           output_record_batches=True))
        encoded = (transformed
                   | f'Encode{name}' >> tft_beam.EncodeTransformedDataset())
        _ = encoded | f'Write{name}' >> beam.io.WriteToTFRecord(
            os.path.join(transformed_dir, f'Split-{split}', 'data_tfrecord'),
            file_name_suffix='.gz')

  tf.io.gfile.rmtree(temp_dir)
  # The exported model parses raw examples by this schema.
  metadata_io.write_metadata(
      dataset_metadata.DatasetMetadata(schema),
      os.path.join(graph_dir, tft.TFTransformOutput.RAW_METADATA_DIR))
  result_counts = {
      split: artifacts.count_records(
          artifacts.split_pattern(transformed_dir, split))
      for split in SPLITS
  }
  logging.info('Transform: wrote the transform graph to %s and transformed '
               'examples %s to %s', graph_dir, result_counts, transformed_dir)
  return TransformResult(graph_dir, transformed_dir, result_counts)


def load_transform_output(graph_dir: str) -> tft.TFTransformOutput:
  return tft.TFTransformOutput(graph_dir)

"""MovieLens 100K: one example per rating, and one per movie as a candidate.

`data_path` is the folder that GroupLens publishes as `ml-100k`, read as
published:
- `u.data`: tab-separated user id, item id, rating (1 to 5) and Unix seconds.
- `u.item`: pipe-separated movie id, title, release date (`01-Jan-1995`),
  video release date, IMDb URL, then one 0/1 flag per genre of `u.genre`.
- `u.user`: pipe-separated user id, age, gender, occupation and zip code.
- `u.genre`: pipe-separated genre name and the index of its flag in `u.item`.

`u.item` and `u.user` are Latin-1 text (titles such as "Metisse (Café au
Lait) (1993)"), so they are decoded as Latin-1 and never as UTF-8. `u.data`
holds only ASCII digits, and the shared reader decodes it as UTF-8, which
rejects a line with stray non-ASCII bytes.

Two kinds of examples share one dataset:
- a rating (one per u.data row): `rating` '1' to '5', the ids, `time`, and
  the movie's and the user's fields joined in. `example_id` is
  `<user id>-<item id>`, or `<user id>-<item id>-<time>` for each rating of a
  pair that the user rated at more than one time.
- a movie (one per u.item row, see `MovieLensAdapter.emit_movie_examples`):
  `example_id` `item-<item id>`, the movie's fields, `rating` '', `time` 0 and
  empty user fields.
A rating whose movie has no u.item row, or whose user has no u.user row, keeps
its ids and gets empty fields ('', [] or 0) for the missing side.
"""

import collections
import os
import re
from typing import Any, Dict, Iterator, List, Optional, Tuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from components.adapters import base
from components.adapters import readers

RATINGS_FILE = 'u.data'
MOVIES_FILE = 'u.item'
USERS_FILE = 'u.user'
GENRES_FILE = 'u.genre'
MOVIELENS_ENCODING = 'latin-1'

# Columns of u.item before the genre flags: id, title, release date, video
# release date and IMDb URL.
_MOVIE_LEADING_COLUMNS = 5
_RATING_COLUMNS = 4
_USER_COLUMNS = 5
_MIN_RATING, _MAX_RATING = 1, 5

MOVIE_EXAMPLE_PREFIX = 'item-'

_FEATURE_TYPES = {
    'example_id': base.STRING,
    'user_id': base.STRING,
    'item_id': base.STRING,
    'time': base.INT,
    'title': base.STRING,
    'genres': base.STRING_LIST,
    'release_year': base.INT,
    'age': base.INT,
    'gender': base.STRING,
    'occupation': base.STRING,
    'zip_code': base.STRING,
    'rating': base.STRING,
}

# The fields that the joins copy from a movie and from a user onto a rating.
_MOVIE_FIELDS = ('title', 'genres', 'release_year')
_USER_FIELDS = ('age', 'gender', 'occupation', 'zip_code')

_INTEGER = re.compile(r'[+-]?[0-9]+')
_RELEASE_DATE = re.compile(
    r'[0-9]{1,2}-(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)-([0-9]{4})')

# Latin-1 decodes every byte, so a file in another encoding shows up as
# control characters: Windows-1252 quotes (0x91-0x94) and most UTF-8
# continuation bytes fall in 0x80-0x9F. Tab is allowed.
_CONTROL_CHARACTERS = re.compile('[\x00-\x08\x0a-\x1f\x7f-\x9f]')

# Tags of the join inputs and of the movie examples output.
_RATINGS = 'ratings'
_MOVIES = 'movies'
_USERS = 'users'
_MOVIE_EXAMPLES = 'movie_examples'

_METRICS_NAMESPACE = 'movielens'


class MovieLensAdapter(base.DatasetAdapter):
  """Reads MovieLens 100K's u.data, u.item, u.user and u.genre from a folder.

  Rating examples serve a ranking task, which predicts the rating a user
  gives a movie. A retrieval task instead scores every movie for a user and
  needs all 1,682 movies as candidates, including movies without ratings,
  which no rating example carries. One movie example per u.item row
  gives retrieval that candidate set.

  Attributes:
    emit_movie_examples: whether each u.item row also becomes a movie example
      (default True). Set it to False on a subclass or an instance when only
      rating examples are wanted, for example for a ranking-only model that
      would otherwise need to skip 1,682 examples without a label. A u.item
      row then appears only in the ratings of its movie, so a movie without
      ratings ends up in no example. The `movies_without_ratings` Beam
      counter counts those movies.
  """

  name = 'movielens'
  emit_movie_examples: bool = True

  def feature_types(self) -> Dict[str, str]:
    return dict(_FEATURE_TYPES)

  def input_files(self) -> List[str]:
    paths = [self._path(f) for f in
             (RATINGS_FILE, MOVIES_FILE, USERS_FILE, GENRES_FILE)]
    missing = [p for p in paths if not readers.match_files(p)]
    if missing:
      raise FileNotFoundError(
          f'MovieLens file(s) not found: {missing}. data.path must be the '
          f'MovieLens 100K folder with {RATINGS_FILE}, {MOVIES_FILE}, '
          f'{USERS_FILE} and {GENRES_FILE}.')
    return paths

  def read(self, pipeline: beam.Pipeline) -> base.AdapterOutput:
    ratings_path, movies_path, users_path, genres_path = self.input_files()
    genres = read_genres(genres_path)

    ratings_read = readers.read_text_lines(pipeline, ratings_path, 'Ratings')
    ratings = readers.parse_rows(ratings_read.rows, 'ParseRatings',
                                 _keyed_rating)
    movies_read = _read_latin1_lines(pipeline, movies_path, 'Movies')
    movies = readers.parse_rows(movies_read.rows, 'ParseMovies',
                                _MovieParser(genres))
    users_read = _read_latin1_lines(pipeline, users_path, 'Users')
    users = readers.parse_rows(users_read.rows, 'ParseUsers', _keyed_user)

    # CoGroupByKey, not side inputs: a side input copies the whole movie and
    # user tables into the memory of every worker, while a join brings each
    # movie or user together with its own ratings only. The same groups also
    # expose duplicate ids and repeated ratings of a pair.
    rated_movies = (
        {_MOVIES: movies.parsed, _RATINGS: ratings.parsed}
        | 'JoinRatingsWithMovies' >> beam.CoGroupByKey()
        | 'AddMovieToRatings' >> beam.ParDo(
            _AddMovie(self.emit_movie_examples)).with_outputs(
                readers.REJECTED, _MOVIE_EXAMPLES, main=_RATINGS))
    rated_by_users = (
        {_USERS: users.parsed, _RATINGS: rated_movies[_RATINGS]}
        | 'JoinRatingsWithUsers' >> beam.CoGroupByKey()
        | 'AddUserToRatings' >> beam.ParDo(_AddUser()).with_outputs(
            readers.REJECTED, main=_RATINGS))

    examples = ((rated_by_users[_RATINGS], rated_movies[_MOVIE_EXAMPLES])
                | 'FlattenRatingAndMovieExamples' >> beam.Flatten())
    rejected = ((ratings_read.rejected, ratings[readers.REJECTED],
                 movies_read.rejected, movies[readers.REJECTED],
                 users_read.rejected, users[readers.REJECTED],
                 rated_movies[readers.REJECTED],
                 rated_by_users[readers.REJECTED])
                | 'FlattenRejectedRows' >> beam.Flatten())
    input_rows = ((ratings_read.input_rows, movies_read.input_rows,
                   users_read.input_rows)
                  | 'FlattenInputRowCounts' >> beam.Flatten())
    return base.AdapterOutput(examples, rejected, input_rows)

  def _path(self, file_name: str) -> str:
    return os.path.join(self.data_path, file_name)


def read_genres(path: str) -> List[str]:
  """Read u.genre into the genre names, in the order of u.item's flags.

  u.genre has 19 lines, so it is read here while the pipeline is built and
  not by Beam. Its lines are not counted as input rows, because no example
  comes from them.

  Raises:
    ValueError: when a line is not `name|index` or the indices do not count
      0, 1, 2, ... in order.
  """
  with FileSystems.open(path, mime_type='application/octet-stream') as f:
    text = f.read().decode(MOVIELENS_ENCODING)

  genres = []
  for line_number, line in enumerate(text.splitlines(), start=1):
    if not line.strip():
      continue
    name, _, index = line.partition('|')
    if not name or index.strip() != str(len(genres)):
      raise ValueError(
          f'{path} line {line_number} is {readers.quote_value(line)}, but '
          f'each line must be name|index with indices from 0 in order, so '
          f'this line needs index {len(genres)}. Use the u.genre file '
          'published with the data.')
    genres.append(name)
  if not genres:
    raise ValueError(f'{path} lists no genres; u.item cannot be read without '
                     'them. Use the u.genre file published with the data.')
  return genres


def _decode_latin1(path: str, line: bytes) -> Tuple[str, Optional[str]]:
  """Decode one line as Latin-1; a control character rejects the line."""
  text = line.decode(MOVIELENS_ENCODING)
  control = _CONTROL_CHARACTERS.search(text)
  if control is None:
    return text, None
  return text, (f'Byte 0x{ord(control.group()):02x} at offset '
                f'{control.start()} is a control character in Latin-1, '
                f'the encoding of {os.path.basename(path)}; check that the '
                f'file is the published one: {readers.quote_value(text)}.')


def _read_latin1_lines(pipeline: beam.Pipeline, pattern: str, name: str):
  """Add steps that read Latin-1 line files into rows.

  Returns:
    `rows` (reshuffled), `rejected` and `input_rows`.
  """
  return readers.read_text_lines(pipeline, pattern, name, _decode_latin1)


def _row_ref(row: readers.Row) -> Tuple[str, int, str]:
  """Return `(source, row, raw)`, which a later step needs to reject the row."""
  return row.source, row.row, row.raw


def _split_columns(row: readers.Row, separator: str, expected: int,
                   file_name: str) -> List[str]:
  columns = row.raw.split(separator)
  if len(columns) != expected:
    kind = 'tab' if separator == '\t' else 'pipe'
    raise readers.InvalidRowError(
        f'The {file_name} row has {len(columns)} {kind}-separated columns, '
        f'but {file_name} rows have {expected}.')
  return columns


def _parse_int(value: str, column: str) -> int:
  text = value.strip()
  if not _INTEGER.fullmatch(text):
    raise readers.InvalidRowError(
        f'The {column} is {readers.quote_value(value)}, not an integer.')
  return int(text)


def _parse_id(value: str, column: str) -> int:
  number = _parse_int(value, column)
  if number < 1:
    raise readers.InvalidRowError(
        f'The {column} is {number}, but MovieLens ids count from 1.')
  return number


def _keyed_rating(row: readers.Row) -> Iterator:
  """Yield `(item id, (row reference, rating example))` for a u.data row."""
  columns = _split_columns(row, '\t', _RATING_COLUMNS, RATINGS_FILE)
  user_id = _parse_id(columns[0], 'user id (column 1)')
  item_id = _parse_id(columns[1], 'item id (column 2)')
  rating = _parse_int(columns[2], 'rating (column 3)')
  if not _MIN_RATING <= rating <= _MAX_RATING:
    raise readers.InvalidRowError(
        f'The rating (column 3) is {rating}, but ratings are {_MIN_RATING} '
        f'to {_MAX_RATING}.')
  time = _parse_int(columns[3], 'timestamp (column 4)')
  if time <= 0:
    raise readers.InvalidRowError(
        f'The timestamp (column 4) is {time}, but it must be Unix seconds '
        'after 1970-01-01. ExampleGen reads a time of 0 as no time.')

  example = base.empty_example(_FEATURE_TYPES)
  example.update(user_id=str(user_id), item_id=str(item_id), time=time,
                 rating=str(rating))
  yield item_id, (_row_ref(row), example)


class _MovieParser:
  """Parses u.item rows, whose genre flags follow the order of u.genre."""

  def __init__(self, genres: List[str]):
    self._genres = list(genres)

  def __call__(self, row: readers.Row) -> Iterator:
    """Yield `(item id, (row reference, movie example))` for a u.item row."""
    expected = _MOVIE_LEADING_COLUMNS + len(self._genres)
    columns = _split_columns(row, '|', expected, MOVIES_FILE)
    item_id = _parse_id(columns[0], 'movie id (column 1)')
    genres = self._genre_names(columns[_MOVIE_LEADING_COLUMNS:])
    release_year = _release_year(columns[2])

    example = base.empty_example(_FEATURE_TYPES)
    example.update(example_id=f'{MOVIE_EXAMPLE_PREFIX}{item_id}',
                   item_id=str(item_id), title=columns[1], genres=genres,
                   release_year=release_year)
    yield item_id, (_row_ref(row), example)

  def _genre_names(self, flags: List[str]) -> List[str]:
    names = []
    first_column = _MOVIE_LEADING_COLUMNS + 1
    for column, (genre, flag) in enumerate(zip(self._genres, flags),
                                           start=first_column):
      if flag.strip() not in ('0', '1'):
        raise readers.InvalidRowError(
            f'The {genre} genre flag (column {column}) is '
            f'{readers.quote_value(flag)}, but genre flags are 0 or 1.')
      if flag.strip() == '1':
        names.append(genre)
    return names


def _release_year(text: str) -> int:
  """Return the year of a `01-Jan-1995` release date, or 0 when it is empty."""
  if not text.strip():
    return 0
  match = _RELEASE_DATE.fullmatch(text.strip())
  if match is None:
    raise readers.InvalidRowError(
        f'The release date (column 3) is {readers.quote_value(text)}, not '
        'DD-Mon-YYYY such as 01-Jan-1995.')
  return int(match.group(2))


def _keyed_user(row: readers.Row) -> Iterator:
  """Yield `(user id, (row reference, user fields))` for a u.user row."""
  columns = _split_columns(row, '|', _USER_COLUMNS, USERS_FILE)
  user_id = _parse_id(columns[0], 'user id (column 1)')
  age = _parse_int(columns[1], 'age (column 2)')
  if age < 0:
    raise readers.InvalidRowError(
        f'The age (column 2) is {age}, but an age cannot be negative.')

  user = dict(zip(_USER_FIELDS, [age] + columns[2:]))
  yield user_id, (_row_ref(row), user)


def _first_definition(definitions) -> Tuple[Optional[tuple], list]:
  """Split `(row reference, value)` pairs into the first by file and row
  number, and the rest."""
  ordered = sorted(definitions, key=lambda d: d[0][:2])
  if not ordered:
    return None, []
  return ordered[0], ordered[1:]


def _reject_duplicates(id_name: str, id_value: int, first: tuple,
                       duplicates: list) -> Iterator:
  (source, row, _), _ = first
  reason = f'The {id_name} {id_value} is already defined at {source} row {row}.'
  for (duplicate_source, duplicate_row, raw), _ in duplicates:
    yield beam.pvalue.TaggedOutput(
        readers.REJECTED,
        readers.rejected_row(duplicate_source, duplicate_row, reason, raw))


class _AddMovie(beam.DoFn):
  """Copy a movie's fields onto its ratings and emit its movie example.

  An item id defined by more than one u.item row keeps its first row (by file
  and row number), and the others are rejected. The ratings go on keyed by
  user id.
  """

  def __init__(self, emit_movie_examples: bool):
    self._emit_movie_examples = emit_movie_examples
    self._movies_without_ratings = beam.metrics.Metrics.counter(
        _METRICS_NAMESPACE, 'movies_without_ratings')
    self._ratings_without_movie = beam.metrics.Metrics.counter(
        _METRICS_NAMESPACE, 'ratings_without_movie')

  def process(self, element):
    item_id, grouped = element
    first, duplicates = _first_definition(grouped[_MOVIES])
    movie = None
    if first is not None:
      movie = first[1]
      yield from _reject_duplicates('movie id', item_id, first, duplicates)
      if self._emit_movie_examples:
        yield beam.pvalue.TaggedOutput(_MOVIE_EXAMPLES, movie)

    rated = False
    for ref, example in grouped[_RATINGS]:
      rated = True
      if movie is None:
        self._ratings_without_movie.inc()
      else:
        example = dict(example)
        example.update({f: movie[f] for f in _MOVIE_FIELDS})
        example['genres'] = list(movie['genres'])
      yield int(example['user_id']), (ref, example)
    if movie is not None and not rated:
      self._movies_without_ratings.inc()


class _AddUser(beam.DoFn):
  """Copy a user's fields onto their ratings and give each rating its id.

  A user id defined by more than one u.user row keeps its first row, and the
  others are rejected. The ratings of a pair that the user rated at more than
  one time get the time in their example id. A rating with the same user,
  item and time as an earlier row is rejected, so that one rating event does
  not count twice.
  """

  def __init__(self):
    self._users_without_ratings = beam.metrics.Metrics.counter(
        _METRICS_NAMESPACE, 'users_without_ratings')
    self._ratings_without_user = beam.metrics.Metrics.counter(
        _METRICS_NAMESPACE, 'ratings_without_user')

  def process(self, element):
    user_id, grouped = element
    first, duplicates = _first_definition(grouped[_USERS])
    user = None
    if first is not None:
      user = first[1]
      yield from _reject_duplicates('user id', user_id, first, duplicates)

    # NOTE: this keeps all of one user's ratings in memory to find repeated
    # pairs. The maximum per user in MovieLens 100K is 737 ratings.
    ratings = sorted(grouped[_RATINGS], key=lambda r: r[0][:2])
    if user is None:
      self._ratings_without_user.inc(len(ratings))
    elif not ratings:
      self._users_without_ratings.inc()

    times_per_item = collections.defaultdict(set)
    for _, example in ratings:
      times_per_item[example['item_id']].add(example['time'])
    first_rows = {}
    for ref, example in ratings:
      event = (example['item_id'], example['time'])
      if event in first_rows:
        yield _repeated_rating(user_id, event, first_rows[event], ref)
        continue
      first_rows[event] = ref
      repeated = len(times_per_item[example['item_id']]) > 1
      yield _rating_example(example, user, repeated)


def _repeated_rating(user_id: int, event: Tuple[str, int], first_ref: tuple,
                     ref: tuple):
  item_id, time = event
  source, row, raw = ref
  reason = (f'User {user_id} already rated item {item_id} at time {time} in '
            f'{first_ref[0]} row {first_ref[1]}, and a repeated rating event '
            'is read once.')
  return beam.pvalue.TaggedOutput(
      readers.REJECTED, readers.rejected_row(source, row, reason, raw))


def _rating_example(example: Dict[str, Any], user: Optional[Dict[str, Any]],
                    repeated_pair: bool) -> Dict[str, Any]:
  example = dict(example)
  if user is not None:
    example.update(user)
  example_id = f'{example["user_id"]}-{example["item_id"]}'
  if repeated_pair:
    example_id += f'-{example["time"]}'
  example['example_id'] = example_id
  return example

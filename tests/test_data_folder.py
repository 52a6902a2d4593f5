"""The `folder` source: directories and .zip archives of images, prepared once."""
import logging
import os
import pathlib
import re
import shutil
import zipfile

import numpy as np
import pytest
from PIL import Image

pytest.importorskip('tensorflow_datasets')

from dcgan_jax.config_files import load_config  # pylint: disable=g-import-not-at-top
from dcgan_jax.data import image_files  # pylint: disable=g-import-not-at-top
from dcgan_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
from dcgan_jax.errors import UserError  # pylint: disable=g-import-not-at-top

_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _config(**overrides):
  config = load_config(_ROOT / 'configs/default.py')
  config.update(dict(dataset='folder', image_size=16, channels=3), **overrides)
  return config


def _centre_white(height, width, mode='RGB'):
  """A black image whose largest centred square is white: a centre crop gives pure white."""
  pixels = np.zeros((height, width), np.uint8)
  side = min(height, width)
  top, left = (height - side) // 2, (width - side) // 2
  pixels[top:top + side, left:left + side] = 255
  image = Image.fromarray(pixels, 'L')
  return image if mode == 'L' else image.convert(mode)


def _make_folder(root: pathlib.Path) -> dict[str, int]:
  """Writes readable images of every kind plus junk; returns counts of what was written."""
  (root / 'a' / 'b').mkdir(parents=True)
  _centre_white(40, 60).save(root / 'wide.png')
  _centre_white(50, 30).save(root / 'a' / 'tall.JPG', quality=95)
  _centre_white(32, 32).save(root / 'a' / 'b' / 'square.bmp')
  _centre_white(24, 36).save(root / 'a' / 'b' / 'photo.webp', lossless=True)
  _centre_white(20, 20, 'L').save(root / 'a' / 'grey.png')
  transparent = Image.new('RGBA', (20, 20), (10, 200, 30, 0))  # Invisible green.
  transparent.save(root / 'a' / 'b' / 'clear.png')
  (root / 'broken.jpg').write_bytes(b'\xff\xd8\xff\xe0 not really a jpeg')
  (root / 'notes.txt').write_text('not an image, not counted')
  (root / '.hidden.png').write_bytes(b'ignored hidden file')
  return {'readable': 6, 'corrupt': 1}


def _zip_folder(folder: pathlib.Path, archive: pathlib.Path) -> None:
  with zipfile.ZipFile(archive, 'w') as zf:
    for path in sorted(folder.rglob('*')):
      if path.is_file():
        zf.write(path, path.relative_to(folder).as_posix())


@pytest.fixture
def image_folder(tmp_path):
  folder = tmp_path / 'my images'
  counts = _make_folder(folder)
  return folder, counts


def test_folder_decodes_crops_and_counts_unreadable(image_folder, tmp_path, caplog):
  folder, counts = image_folder
  config = _config(dataset_path=str(folder), data_dir=str(tmp_path / 'tfds'))
  with caplog.at_level(logging.INFO):
    images = input_pipeline.load_all_images(config)
  assert images.shape == (counts['readable'], 16, 16, 3)
  # Every image is white inside its centred square, black outside: cropping that square and
  # resizing gives white everywhere (JPEG ringing allowed for).
  assert images.min() >= 235, images.reshape(len(images), -1).min(axis=1)
  assert f"Skipped {counts['corrupt']} of 7 files" in caplog.text
  assert 'broken.jpg' in caplog.text
  # wide.png, tall.JPG and photo.webp lose the edges of their longer side: said once.
  assert (f"3 of the 6 images of split 'train' in {folder} are not square: only their centred "
          'square is kept') in caplog.text
  assert 'enlarged' not in caplog.text  # Every short side is at least 16.
  assert input_pipeline.dataset_info(config).num_examples == counts['readable']


def test_the_size_tally_counts_enlarged_and_cut_images():
  """A folder of mixed sizes: small images come out blurrier than the rest once enlarged."""
  tally = image_files.SizeTally(image_size=32)
  for size in [(60, 40), (30, 50), (32, 32), (36, 24), (20, 20), (64, 64)]:
    tally.add(size)
  (enlarged,), (cut,) = tally.warnings('here'), tally.notes('here')
  assert enlarged.startswith('3 of the 6 images of here are smaller than 32x32 and were enlarged '
                             'to it (the smallest is 20x20)')
  assert cut.startswith('3 of the 6 images of here are not square')
  # With a crop_size every image is cut on purpose: only an image smaller than 32 is enlarged.
  cropped = image_files.SizeTally(image_size=32, crop_size=40)
  for size in [(60, 40), (100, 30), (50, 50)]:
    cropped.add(size)
  (message,) = cropped.warnings('there')
  assert message.startswith('1 of the 3 images of there is smaller than 32x32')
  assert cropped.notes('there') == []
  # A crop smaller than image_size enlarges every crop: said as the crop's doing (CelebA's
  # 178x218 images at image_size 128 with the 108 face crop).
  faces = image_files.SizeTally(image_size=128, crop_size=108)
  for _ in range(3):
    faces.add((178, 218))
  (message,) = faces.warnings('celeba')
  assert message.startswith('crop_size 108 is smaller than image_size 128: the crops of 3 of '
                            'the 3 images of celeba were enlarged to 128x128')
  assert image_files.SizeTally(16).warnings('x') == image_files.SizeTally(16).notes('x') == []



def test_skipped_files_say_why_and_an_emptied_class_is_named(tmp_path, caplog, monkeypatch):
  """A huge image was "not a readable image" (PIL's decompression-bomb guard); a class whose
  files are all unreadable left a class-conditional run without real images of it, silently."""
  folder = tmp_path / 'pets'
  for name in ('bird', 'cat', 'dog'):
    (folder / name).mkdir(parents=True)
  Image.new('RGB', (12, 12), (255, 0, 0)).save(folder / 'cat' / 'small.png')
  Image.new('RGB', (40, 40), (0, 0, 255)).save(folder / 'dog' / 'huge.png')  # 1600 pixels.
  Image.new('RGB', (12, 12)).save(folder / 'dog' / 'small.png')
  (folder / 'bird' / 'a.jpg').write_bytes(b'corrupt')
  monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 500)  # Refused above twice this.
  config = _config(dataset_path=str(folder), data_dir=str(tmp_path / 'tfds'), image_size=8)
  with caplog.at_level(logging.WARNING):
    images = input_pipeline.load_all_images(config)
  assert len(images) == 2
  assert 'huge.png' in caplog.text and 'too large for PIL to open (Image size (1600 pixels)' in (
      caplog.text)
  assert 'a.jpg' in caplog.text and 'not a readable image' in caplog.text
  assert "Class folder(s) 'bird' of split 'train'" in caplog.text
  # None readable: the error names the first file and why.
  (folder / 'cat' / 'small.png').unlink()
  (folder / 'dog' / 'small.png').unlink()
  with pytest.raises(UserError, match=r'None of the 2 image files .*\(bird/a.jpg: not a '
                                      r'readable image\)'):
    input_pipeline.load_all_images(config)


def test_grey_output_and_transparency_on_white(tmp_path):
  folder = tmp_path / 'imgs'
  folder.mkdir()
  Image.new('RGBA', (12, 12), (0, 0, 0, 0)).save(folder / 'clear.png')
  Image.new('RGB', (12, 12), (255, 0, 0)).save(folder / 'red.png')
  config = _config(dataset_path=str(folder), data_dir=str(tmp_path / 'tfds'), channels=1)
  images = input_pipeline.load_all_images(config)
  assert images.shape == (2, 16, 16, 1)
  # Transparent -> white (255); pure red -> luma 0.299 * 255 = 76.
  assert sorted(np.unique(images).tolist()) == [76, 255]


def test_zip_gives_the_same_images_as_the_folder(image_folder, tmp_path, caplog):
  folder, counts = image_folder
  archive = tmp_path / 'images.zip'
  _zip_folder(folder, archive)
  from_folder = input_pipeline.load_all_images(
      _config(dataset_path=str(folder), data_dir=str(tmp_path / 'tfds')))
  with caplog.at_level(logging.WARNING):
    from_zip = input_pipeline.load_all_images(
        _config(dataset_path=str(archive), data_dir=str(tmp_path / 'tfds')))
  assert from_zip.shape == (counts['readable'], 16, 16, 3)
  assert 'Skipped 1 of 7 files' in caplog.text
  # Same relative names -> same examples in the same (key-hashed) order.
  np.testing.assert_array_equal(from_zip, from_folder)
  preparations = sorted(p.parent.name.rsplit('_', 1)[0]
                        for p in (tmp_path / 'tfds' / 'folder_images').glob('*/1.0.0'))
  assert preparations == ['images', 'my_images']  # One per source, named after it.


def test_prepared_once_then_reused_until_the_folder_changes(image_folder, tmp_path, monkeypatch,
                                                            caplog):
  folder, counts = image_folder
  config = _config(dataset_path=str(folder), data_dir=str(tmp_path / 'tfds'))
  first = input_pipeline.load_all_images(config)

  def no_reading(*args, **kwargs):
    raise AssertionError('images were read again although the dataset was prepared')

  with monkeypatch.context() as patch:
    patch.setattr(image_files.ImageFiles, 'read_all', no_reading)
    again = input_pipeline.load_all_images(config)
    np.testing.assert_array_equal(again, first)
    # Another image size is another preparation: it must read the files.
    with pytest.raises(AssertionError, match='read again'):
      input_pipeline.load_all_images(_config(dataset_path=str(folder),
                                             data_dir=str(tmp_path / 'tfds'), image_size=8))
  input_pipeline.load_all_images(_config(dataset_path=str(folder), data_dir=str(tmp_path / 'tfds'),
                                         image_size=8))
  # Another folder with the same base name is another source: not counted below.
  other = tmp_path / 'elsewhere' / folder.name
  shutil.copytree(folder, other)
  input_pipeline.load_all_images(_config(dataset_path=str(other), data_dir=str(tmp_path / 'tfds')))
  # A new file changes the fingerprint: prepared anew, with the extra image; the two earlier
  # copies of this folder (sizes 16 and 8) stay, and the log says where and how large they are.
  _centre_white(16, 16).save(folder / 'new.png')
  caplog.clear()
  with caplog.at_level(logging.INFO):
    assert input_pipeline.load_all_images(config).shape[0] == counts['readable'] + 1
  notes = [r.getMessage() for r in caplog.records if 'other preparation' in r.getMessage()]
  assert len(notes) == 1, notes
  assert re.match(r'data_dir holds 2 other preparation\(s\) of the same source .*, [\d.]+ MB: ',
                  notes[0]), notes[0]
  listed = notes[0].split(' MB: ')[1].split('. Delete')[0].split(', ')
  assert all(pathlib.Path(p).is_dir() for p in listed) and len(listed) == 2


@pytest.mark.parametrize('setup,message', [
    ('missing', 'does not exist'),
    ('empty', 'holds no images'),
    ('zip_without_images', 'holds no images'),
    ('corrupt', 'None of the 2 image files'),
    ('not_a_folder', 'neither a directory nor a .zip'),
    ('damaged_zip', r'data.zip\' is not a readable .zip file \(damaged or cut short\?\)'),
    ('unset', 'dataset_path is empty'),
])
def test_bad_folders_are_user_errors(tmp_path, setup, message):
  path = tmp_path / 'data'
  if setup == 'empty':
    path.mkdir()
    (path / 'readme.txt').write_text('no images here')
  elif setup == 'corrupt':
    (path / 'sub').mkdir(parents=True)
    (path / 'a.png').write_bytes(b'not a png')
    (path / 'sub' / 'b.jpg').write_bytes(b'')
  elif setup == 'not_a_folder':
    path = tmp_path / 'file.txt'
    path.write_text('hello')
  elif setup == 'damaged_zip':  # The first half of a real archive: no central directory.
    path = tmp_path / 'data.zip'
    with zipfile.ZipFile(path, 'w') as archive:
      archive.writestr('images/a.png', b'x' * 1000)
    path.write_bytes(path.read_bytes()[:500])
  elif setup == 'zip_without_images':
    path = tmp_path / 'data.zip'
    with zipfile.ZipFile(path, 'w') as archive:
      archive.writestr('images/readme.txt', 'no images here')
  config = _config(dataset_path='' if setup == 'unset' else str(path),
                   data_dir=str(tmp_path / 'tfds'))
  with pytest.raises(UserError, match=message) as caught:
    input_pipeline.dataset_info(config)
  assert '\n' not in str(caught.value)  # One sentence, printable as is by the CLI.
  # Nothing half-prepared is left behind to be mistaken for a dataset later.
  prepared_dir = tmp_path / 'tfds' / 'folder_images'
  leftovers = [p for p in prepared_dir.rglob('dataset_info.json')] if prepared_dir.exists() else []
  assert not leftovers


def test_fingerprint_tracks_files_and_settings(image_folder):
  folder, _ = image_folder
  files = image_files.ImageFiles(str(folder))
  assert files.fingerprint(16, 3) == image_files.ImageFiles(str(folder)).fingerprint(16, 3)
  assert files.fingerprint(16, 3) != files.fingerprint(32, 3)
  os.utime(folder / 'wide.png', ns=(1, 1))
  assert image_files.ImageFiles(str(folder)).fingerprint(16, 3) != files.fingerprint(16, 3)
  assert files.label() == 'my_images'


def test_crop_is_applied_once_and_matches_the_pil_reference(tmp_path):
  folder = tmp_path / 'ramps'
  folder.mkdir()
  ramp = np.tile(np.linspace(0, 255, 48).astype(np.uint8), (40, 1))  # 40x48, bright to the right.
  Image.fromarray(ramp, 'L').save(folder / 'ramp.png')
  config = _config(dataset_path=str(folder), data_dir=str(tmp_path / 'tfds'), channels=1,
                   crop_size=8)
  images = input_pipeline.load_all_images(config)
  expected = image_files.square_image((folder / 'ramp.png').read_bytes(), 16, 1, crop_size=8)
  np.testing.assert_array_equal(images[0], expected)
  # An 8-pixel window in the middle of a 48-pixel ramp spans about 8/48 of the range.
  assert 100 < expected.min() < expected.max() < 160


def test_class_folders_follow_the_image_folder_convention():
  assert image_files.class_folders(['cat/1.png', 'dog/2.png', 'cat/more/3.png']) == (
      ['cat', 'dog'], [0, 1, 0])
  # A zip of a folder: the shared top folder is skipped.
  assert image_files.class_folders(['pets/dog/1.png', 'pets/cat/2.png']) == (
      ['cat', 'dog'], [1, 0])
  assert image_files.class_folders(['loose.png', 'cat/1.png', 'dog/2.png']) is None
  assert image_files.class_folders(['cat/1.png', 'cat/2.png']) is None  # One class.
  assert image_files.class_folders(['a.png', 'b.png']) is None
  # Zips named './cat/1.png' (zip -r x.zip ./cat ./dog) or with Windows separators.
  for names in (['./cat/1.png', './dog/2.png'], ['cat\\1.png', 'dog\\2.png']):
    assert image_files.class_folders(names) == (['cat', 'dog'], [0, 1])


def test_zips_of_odd_layouts_keep_their_images_once(tmp_path):
  """'./'-prefixed entries were taken for hidden files; a name added twice was two examples
  (tfds: "Two examples share the same hashed key")."""
  png = tmp_path / 'one.png'
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(png)
  archive = tmp_path / 'odd.zip'
  with zipfile.ZipFile(archive, 'w') as zf:  # ZipInfo keeps names as given (write() cleans).
    for name in ('./cat/1.png', './dog/2.png', './.hidden/3.png', 'dog\\4.png'):
      zf.writestr(zipfile.ZipInfo(name), png.read_bytes())
  with zipfile.ZipFile(archive, 'a') as zf, pytest.warns(UserWarning, match='Duplicate name'):
    zf.writestr(zipfile.ZipInfo('./cat/1.png'), png.read_bytes())  # Appended again.
  assert image_files.ImageFiles(str(archive)).names == ['./cat/1.png', './dog/2.png',
                                                        'dog\\4.png']


def test_a_link_back_up_the_tree_lists_each_image_once(tmp_path):
  """os.walk(followlinks=True) listed cat/loop/cat/a.png, cat/loop/dog/b.png, ... (labelled
  'cat') some 40 levels deep."""
  for name in ('cat', 'dog', 'more'):
    (tmp_path / 'pets' / name).mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / 'pets' / name / 'a.png')
  os.symlink('..', tmp_path / 'pets' / 'cat' / 'loop')
  os.symlink(tmp_path / 'pets' / 'more', tmp_path / 'pets' / 'dog' / 'linked')
  os.symlink(tmp_path / 'missing', tmp_path / 'pets' / 'broken')
  (tmp_path / 'elsewhere').mkdir()
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / 'elsewhere' / 'b.png')
  os.symlink(tmp_path / 'elsewhere', tmp_path / 'pets' / 'dog' / 'outside')
  # Linked folders are still followed (each real folder once: 'more' is reached first by
  # its own name, as names are sorted).
  assert image_files.ImageFiles(str(tmp_path / 'pets')).names == [
      'cat/a.png', 'dog/a.png', 'dog/outside/b.png', 'more/a.png']


@pytest.mark.parametrize('as_zip', [False, True])
def test_class_subfolders_become_labels(tmp_path, as_zip):
  folder = tmp_path / 'pets' / 'pets'  # As zipped: everything under one top folder.
  brightness = {'bird': 40, 'cat': 120, 'dog': 220}
  for name, value in brightness.items():
    (folder / name).mkdir(parents=True)
    for i in range(3):
      Image.fromarray(np.full((12, 12, 3), value + i, np.uint8)).save(folder / name / f'{i}.png')
  path = tmp_path / 'pets'
  if as_zip:
    _zip_folder(path, tmp_path / 'pets.zip')
    path = tmp_path / 'pets.zip'
  config = _config(dataset_path=str(path), data_dir=str(tmp_path / 'tfds'), image_size=8,
                   num_classes=3)
  info = input_pipeline.dataset_info(config)
  assert info.num_classes == 3
  # The run's log names them: the labels are the folders in sorted order.
  assert info.class_names == ('bird', 'cat', 'dog')
  assert info.describe_classes() == ', 3 classes (0 bird, 1 cat, 2 dog)'
  input_pipeline.check_num_classes(config, info)
  images, labels = input_pipeline.load_all_images(config, with_labels=True)
  assert sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
  by_label = [brightness[name] for name in sorted(brightness)]  # bird 0, cat 1, dog 2.
  for image, label in zip(images, labels):
    assert abs(float(image.mean()) - by_label[label]) <= 3
  config.num_classes = 2
  with pytest.raises(UserError, match='has 3 classes; set num_classes to 3'):
    input_pipeline.check_num_classes(config, info)


def test_a_folder_of_loose_images_has_no_labels(image_folder, tmp_path):
  folder, _ = image_folder
  config = _config(dataset_path=str(folder), data_dir=str(tmp_path / 'tfds'), num_classes=2)
  # Found from the file names, before a single image is decoded (was after preparing them all).
  with pytest.raises(UserError, match='has no class labels.*one subfolder per class'):
    input_pipeline.dataset_info(config)
  assert not (tmp_path / 'tfds').exists()
  config.num_classes = 0
  info = input_pipeline.dataset_info(config)
  assert info.num_classes == 0
  config.num_classes = 2
  with pytest.raises(UserError, match='has no class labels.*one subfolder per class'):
    input_pipeline.check_num_classes(config, info)


def test_a_folder_with_other_classes_is_refused_before_decoding(tmp_path):
  for name in ('bird', 'cat', 'dog'):
    (tmp_path / 'pets' / name).mkdir(parents=True)
    Image.new('RGB', (12, 12)).save(tmp_path / 'pets' / name / '1.png')
  config = _config(dataset_path=str(tmp_path / 'pets'), data_dir=str(tmp_path / 'tfds'),
                   num_classes=10)
  with pytest.raises(UserError, match=r"num_classes is 10 but dataset 'folder:.*pets' has 3 "
                                      'classes; set num_classes to 3'):
    input_pipeline.dataset_info(config)
  assert not (tmp_path / 'tfds').exists()
  # One image beside the class folders: named, not "has no class labels" (it has them).
  Image.new('RGB', (12, 12)).save(tmp_path / 'pets' / 'cover.png')
  config.num_classes = 3
  with pytest.raises(UserError, match=r"num_classes is 3 but 1 image\(s\) of folder:.*pets lie "
                                      r"outside any class folder \(e.g. 'cover.png'\); move them"):
    input_pipeline.dataset_info(config)
  assert image_files.loose_images(['a/1.png', 'b/2.png', 'c.png']) == ['c.png']
  assert image_files.loose_images(['a/1.png', 'c.png']) == []  # One folder: not labelled.
  assert image_files.loose_images(['top/a/1.png', 'top/b/2.png']) == []  # A zip's top folder.


def _patch_zip_member(archive: pathlib.Path, member: int, *, flag: int = 0,
                      method: int | None = None) -> None:
  """Sets bits of a member's general-purpose flag (and its compression method) in both of its
  headers, as zip tools write them: bit 0 marks encryption, method 9 is Deflate64."""
  data = bytearray(archive.read_bytes())
  with zipfile.ZipFile(archive) as zf:
    local = zf.infolist()[member].header_offset
  central = [i for i in range(len(data)) if data[i:i + 4] == b'PK\x01\x02'][member]
  for flag_at in (local + 6, central + 8):
    data[flag_at] |= flag
    if method is not None:
      data[flag_at + 2:flag_at + 4] = method.to_bytes(2, 'little')
  archive.write_bytes(bytes(data))


def test_zip_members_zipfile_cannot_read_are_skipped_not_a_crash(tmp_path, caplog):
  """An encrypted member (zipfile raises RuntimeError) and a Deflate64 one (Windows writes
  them; NotImplementedError) are unreadable files like any other, not a traceback."""
  folder = tmp_path / 'imgs'
  folder.mkdir()
  for i in range(3):
    Image.new('RGB', (12, 12), (80 * i, 0, 0)).save(folder / f'{i}.png')
  archive = tmp_path / 'imgs.zip'
  _zip_folder(folder, archive)
  _patch_zip_member(archive, 0, flag=0x1)
  _patch_zip_member(archive, 1, method=9)
  files = image_files.ImageFiles(str(archive))
  assert [data is None for _, data in files.read_all(files.names)] == [True, True, False]
  with caplog.at_level(logging.WARNING):
    images = input_pipeline.load_all_images(
        _config(dataset_path=str(archive), data_dir=str(tmp_path / 'tfds'), image_size=8))
  assert len(images) == 1 and 'Skipped 2 of 3 files' in caplog.text


def test_names_that_are_not_utf8_are_stored_escaped(tmp_path, caplog):
  """os.walk hands such names over with surrogates, which tfds cannot store as text."""
  folder = tmp_path / 'imgs'
  (folder / 'ok').mkdir(parents=True)
  Image.new('RGB', (12, 12), (10, 20, 30)).save(folder / 'ok' / 'plain.png')
  with open(os.path.join(os.fsencode(folder), b'caf\xe9.png'), 'wb') as f:
    Image.new('RGB', (12, 12), (200, 100, 0)).save(f, format='PNG')
  (folder / 'notes.txt').write_text('not an image')
  (folder / 'photo.jfif').write_bytes(b'a JPEG by another name')
  assert image_files.printable_name(os.fsdecode(b'caf\xe9.png')) == 'caf\\xe9.png'
  files = image_files.ImageFiles(str(folder))
  assert len(files.names) == 2 and files.other_files == {'.txt': 1, '.jfif': 1}
  with caplog.at_level(logging.INFO):
    images = input_pipeline.load_all_images(
        _config(dataset_path=str(folder), data_dir=str(tmp_path / 'tfds'), image_size=8))
  assert sorted(images[:, 0, 0, 0].tolist()) == [10, 200]
  assert 'Passed over 2 files that are not images by their extension (1 .jfif, 1 .txt)' in (
      caplog.text)


@pytest.mark.parametrize('values,expected', [
    ([0.0, 0.5, 1.0], [0, 128, 255]),  # A float image in [0, 1] (PIL's convert truncates to 0).
    ([0.0, 2.0, 255.0], [0, 2, 255]),  # 0..255 floats stay.
    ([0.0, 1000.0, 65535.0], [0, 4, 255]),  # Beyond 255: read as 16-bit.
    ([float('nan'), 0.25, 1.0], [0, 64, 255]),  # NaN is 0.
])
def test_floating_point_images_are_scaled_to_eight_bits(values, expected):
  image = Image.fromarray(np.array([values], np.float32), 'F')
  converted = image_files.eight_bit_grey(image)
  assert converted.mode == 'L' and np.asarray(converted)[0].tolist() == expected


def test_images_another_process_prepared_first_are_used(tmp_path, monkeypatch, caplog):
  """Runs of a sweep started together prepare the same new folder at once; the one whose tfds
  rename comes second fails (FileExistsError) and must use the other's copy."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  folder = tmp_path / 'imgs'
  folder.mkdir()
  for i in range(3):
    Image.new('RGB', (12, 12), (60 * i, 0, 0)).save(folder / f'{i}.png')
  prepare = tfds.core.GeneratorBasedBuilder.download_and_prepare

  def prepared_by_the_other_process_first(self, *args, **kwargs):
    prepare(self, *args, **kwargs)  # The other process's copy, complete and in place.
    raise FileExistsError(f'Cannot rename {self.data_dir}: destination already exists.')

  monkeypatch.setattr(tfds.core.GeneratorBasedBuilder, 'download_and_prepare',
                      prepared_by_the_other_process_first)
  config = _config(dataset_path=str(folder), data_dir=str(tmp_path / 'tfds'), image_size=8)
  with caplog.at_level(logging.INFO):
    images = input_pipeline.load_all_images(config)
  assert sorted(images[:, 0, 0, 0].tolist()) == [0, 60, 120]
  assert 'Another process prepared the images of' in caplog.text


def test_class_names_that_only_repeat_their_index_are_left_out_of_the_log():
  info = input_pipeline.DatasetInfo('digits', 'train', 10, (8, 8, 1), 10,
                                    tuple(str(i) for i in range(10)))
  assert info.describe_classes() == ', 10 classes'
  many = input_pipeline.DatasetInfo('x', 'train', 30, (8, 8, 1), 30,
                                    tuple(f'c{i}' for i in range(30)))
  assert many.describe_classes(limit=3) == ', 30 classes (0 c0, 1 c1, 2 c2, ...)'
  assert input_pipeline.DatasetInfo('x', 'train', 3, (8, 8, 1)).describe_classes() == ''

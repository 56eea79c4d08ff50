"""The documentation holds together in a fresh clone: every relative link and
image of README.md, docs/ and benchmarks/README.md points at a file of the
repository, README.md stays a short front door, and nothing cites notes
that live outside the repository."""

import pathlib
import re
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README_MAX_LINES = 250
# Notes kept outside the repository, which a clone does not hold (the
# strings are split so that this file does not cite them itself).
OUTSIDE_NOTES = ('design' + '.md', '../' + 'shared')
SKIPPED_FOLDERS = {'.git', '.venv', 'runs', '__pycache__', 'node_modules'}

FENCE = re.compile(r'^\s*(```|~~~)')
CODE_SPAN = re.compile(r'`[^`\n]*`')
# [text](target) and ![alt](target); the target may be <...> and carry a title.
INLINE_LINK = re.compile(r'!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+"[^"]*")?\s*\)')
# [label]: target
REFERENCE_LINK = re.compile(r'^\s{0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)', re.MULTILINE)
HTML_TARGET = re.compile(r'<(?:img|a)\b[^>]*?\b(?:src|href)="([^"]+)"', re.IGNORECASE)


def documentation_pages() -> list[pathlib.Path]:
  pages = [ROOT / 'README.md', ROOT / 'benchmarks' / 'README.md']
  return pages + sorted((ROOT / 'docs').rglob('*.md'))


def prose(text: str) -> str:
  """`text` without fenced code blocks and inline code spans."""
  lines, in_fence = [], False
  for line in text.splitlines():
    if FENCE.match(line):
      in_fence = not in_fence
      continue
    if not in_fence:
      lines.append(CODE_SPAN.sub('', line))
  return '\n'.join(lines)


def link_targets(text: str) -> list[str]:
  """Every link and image target of a markdown page, as written."""
  body = prose(text)
  targets = [m.group(1) for m in INLINE_LINK.finditer(body)]
  targets += [m.group(1) for m in REFERENCE_LINK.finditer(body)]
  targets += [m.group(1) for m in HTML_TARGET.finditer(body)]
  return [t[1:-1] if t.startswith('<') and t.endswith('>') else t for t in targets]


def local_path(target: str) -> str | None:
  """The file part of a relative target; None for web links and anchors."""
  if re.match(r'^[a-zA-Z][a-zA-Z0-9+.-]*:', target) or target.startswith('#'):
    return None  # http(s), mailto, ... or a place in the same page
  return target.split('#', 1)[0].split('?', 1)[0] or None


def broken_links(page: pathlib.Path) -> list[str]:
  """'target' for each relative link of `page` whose file does not exist."""
  broken = []
  for target in link_targets(page.read_text(encoding='utf-8')):
    path = local_path(target)
    if path is None:
      continue
    base = ROOT if path.startswith('/') else page.parent
    if not (base / path.lstrip('/')).exists():
      broken.append(target)
  return broken


def tracked_files() -> list[pathlib.Path]:
  """The repository's files: git's list where there is one, else a walk."""
  try:
    out = subprocess.run(['git', 'ls-files', '-z'], cwd=ROOT, capture_output=True,
                         check=True, timeout=30).stdout
    return [ROOT / name for name in out.decode('utf-8').split('\0') if name]
  except (OSError, subprocess.SubprocessError):
    files = []
    for path in ROOT.rglob('*'):
      parts = set(path.relative_to(ROOT).parts)
      if path.is_file() and not parts & SKIPPED_FOLDERS:
        files.append(path)
    return files


@pytest.mark.parametrize('page', documentation_pages(),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
  assert page.exists(), f'{page.relative_to(ROOT)} is missing'
  assert not broken_links(page), (
      f'{page.relative_to(ROOT)} links to files that do not exist: {broken_links(page)}')


def test_the_link_parser_finds_links_and_images_but_not_code():
  text = ('See [a](docs/a.md#part), ![fig](figures/f.png "title") and [w](https://x.org).\n'
          '[ref]: <docs/b.md>\n'
          '`[not](in/code.md)`\n'
          '```\n[not](in/fence.md)\n```\n'
          '[anchor](#here)\n')
  targets = link_targets(text)
  assert targets == ['docs/a.md#part', 'figures/f.png', 'https://x.org', '#here',
                     'docs/b.md']
  assert [local_path(t) for t in targets] == ['docs/a.md', 'figures/f.png', None, None,
                                              'docs/b.md']


def test_a_broken_link_is_found(tmp_path):
  page = tmp_path / 'page.md'
  (tmp_path / 'there.md').write_text('')
  page.write_text('[ok](there.md) [gone](missing.md#x) ![img](figures/none.png)\n')
  assert broken_links(page) == ['missing.md#x', 'figures/none.png']


def test_readme_is_a_short_front_door():
  lines = (ROOT / 'README.md').read_text(encoding='utf-8').splitlines()
  assert len(lines) <= README_MAX_LINES, (
      f'README.md has {len(lines)} lines; keep it to {README_MAX_LINES} and move the '
      'rest into a page under docs/')


def test_no_file_cites_notes_outside_the_repository():
  citing = []
  for path in tracked_files():
    try:
      data = path.read_bytes()
    except OSError:  # listed by git but deleted in the working tree
      continue
    if b'\0' in data[:8192]:
      continue  # binary
    text = data.decode('utf-8', errors='replace')
    citing += [f'{path.relative_to(ROOT)}: {note}' for note in OUTSIDE_NOTES if note in text]
  assert not citing, ('these files cite notes a clone does not hold; cite '
                      f'docs/architecture.md instead: {citing}')

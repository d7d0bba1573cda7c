"""cnn_jax.caches.private_dir, the one check every cache directory passes (issue 30): made with mode 0700, refused
when another user owns it or could write it, or could put another directory in its place from above."""
from __future__ import annotations

import os
import stat

import pytest

from cnn_jax import caches


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_cache_dir_names_each_kind_below_the_root_and_refuses_others(monkeypatch, tmp_path):
    monkeypatch.setenv(caches.CACHE_ENV, str(tmp_path))
    assert [caches.cache_dir(kind) for kind in caches.KINDS] == [tmp_path / kind for kind in caches.KINDS]
    with pytest.raises(ValueError, match="unknown cache 'models'"):
        caches.cache_dir("models")


def test_missing_directories_are_made_private_whatever_the_umask(tmp_path):
    previous = os.umask(0)
    try:
        made = caches.private_dir(tmp_path / "a" / "b" / "input")
    finally:
        os.umask(previous)
    assert made == tmp_path / "a" / "b" / "input"
    assert [mode(d) for d in (tmp_path / "a", tmp_path / "a" / "b", made)] == [0o700] * 3
    assert caches.private_dir(made) == made  # an existing private directory passes as it is


@pytest.mark.parametrize("bits", [0o770, 0o707, 0o777, 0o1777])
def test_a_cache_directory_group_or_others_can_write_is_refused_with_the_fix(tmp_path, bits):
    directory = tmp_path / "cache"
    directory.mkdir()
    directory.chmod(bits)
    with pytest.raises(caches.UnsafeCacheDirError, match=rf"cache directory {directory} can be written by group or "
                                                         rf"others \(mode {bits:o}\).*fix: .*chmod go-w {directory}"):
        caches.private_dir(directory)
    assert mode(directory) == bits  # refused, not changed


def test_a_cache_directory_others_can_read_passes(tmp_path):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache").chmod(0o755)
    assert caches.private_dir(tmp_path / "cache") == tmp_path / "cache"


def test_a_cache_directory_another_user_owns_is_refused(tmp_path, monkeypatch):
    (tmp_path / "cache").mkdir(mode=0o700)
    owner = os.stat(tmp_path / "cache").st_uid
    monkeypatch.setattr(os, "geteuid", lambda: owner + 1)  # this process runs as another user than the owner
    with pytest.raises(caches.UnsafeCacheDirError, match=rf"cache directory {tmp_path / 'cache'} belongs to user id "
                                                         rf"{owner}, not to this user \({owner + 1}\).*fix: remove it, "
                                                         "or set CNN_JAX_CACHE_DIR"):
        caches.private_dir(tmp_path / "cache")


def test_a_directory_above_that_others_can_write_is_refused_unless_it_is_sticky(tmp_path):
    """Whoever can write a directory above the cache can rename the cache away and put theirs in its place; the
    sticky bit (as /tmp has) forbids renaming another user's entries."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(caches.UnsafeCacheDirError, match=rf"{shared}, above the cache directory {shared}/me/cache, "
                                                         r"can be written by group or others \(mode 777, no sticky"):
        caches.private_dir(shared / "me" / "cache")
    shared.chmod(0o1777)
    assert caches.private_dir(shared / "me" / "cache") == shared / "me" / "cache"


def test_a_link_is_checked_where_it_lies_and_where_it_leads(tmp_path):
    mine, shared = tmp_path / "mine", tmp_path / "shared"
    mine.mkdir(mode=0o700)
    shared.mkdir(mode=0o700)
    shared.chmod(0o777)
    (shared / "cache").mkdir(mode=0o700)
    (mine / "to_shared").symlink_to(shared / "cache")  # a private directory, reached below a shared one
    with pytest.raises(caches.UnsafeCacheDirError, match=rf"^{shared}, above the cache directory {mine}/to_shared"):
        caches.private_dir(mine / "to_shared")
    (mine / "cache").mkdir(mode=0o700)
    (shared / "to_mine").symlink_to(mine / "cache")  # a link others could change to point elsewhere
    with pytest.raises(caches.UnsafeCacheDirError, match=rf"^{shared}, above the cache directory {shared}/to_mine"):
        caches.private_dir(shared / "to_mine")


def test_a_file_in_the_cache_directory_place_is_refused(tmp_path):
    (tmp_path / "cache").write_text("not a directory")
    with pytest.raises(caches.UnsafeCacheDirError, match="is not a directory; fix: remove it"):
        caches.private_dir(tmp_path / "cache")

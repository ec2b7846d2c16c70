"""What the distribution installs: only the p2pgolf namespace, with the four room folders under it."""

from __future__ import annotations

import runpy
from pathlib import Path
from unittest import mock

import setuptools

REPO = Path(__file__).resolve().parents[1]
ROOMS = ("node", "pool", "protocol", "trainer")


def _setup_arguments() -> dict:
    with mock.patch.object(setuptools, "setup") as setup:
        runpy.run_path(str(REPO / "setup.py"), run_name="__main__")
    (call,) = setup.call_args_list
    return call.kwargs


def test_every_installed_package_lives_under_the_p2pgolf_namespace():
    packages = _setup_arguments()["packages"]
    assert packages and all(name.startswith("p2pgolf.") for name in packages), packages
    # PyPI already has distributions named like our rooms (`trainer` is one); none is installed bare.
    assert not set(packages) & set(ROOMS)


def test_the_package_list_covers_every_folder_of_the_four_rooms():
    packages = set(_setup_arguments()["packages"])
    folders = {
        "p2pgolf." + ".".join(init.parent.relative_to(REPO).parts)
        for room in ROOMS
        for init in (REPO / room).rglob("__init__.py")
    }
    assert folders == packages


def test_each_room_is_installed_from_its_folder_at_the_repository_top():
    assert _setup_arguments()["package_dir"] == {f"p2pgolf.{room}": room for room in ROOMS}


def test_the_imported_rooms_are_this_checkout():
    import p2pgolf.node
    import p2pgolf.trainer

    assert Path(p2pgolf.node.__file__).resolve().parent == REPO / "node"
    assert Path(p2pgolf.trainer.__file__).resolve().parent == REPO / "trainer"

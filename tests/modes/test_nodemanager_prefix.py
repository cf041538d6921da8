"""Which record is the node's default: ``<PLC_SLICE_PREFIX>_default``, the prefix found
where the node manager keeps it."""

from __future__ import annotations

from pathlib import Path

from bwenforcer.nodemanager import plc_config_prefix, slice_prefix_of


def test_prefix_from_the_node_managers_plc_config_read_not_run(tmp_path: Path) -> None:
    conf = tmp_path / "plc_config"
    conf.write_text(
        'PLC_NAME="PlanetLab Europe"\nimport os; os._exit(9)\nPLC_SLICE_PREFIX = "ple"\n'
    )
    assert plc_config_prefix(str(conf)) == "ple"
    conf.write_text('PLC_SLICE_PREFIX="../../x"\n')  # not a prefix: none
    assert plc_config_prefix(str(conf)) is None
    assert plc_config_prefix(str(tmp_path / "missing")) is None


def test_prefix_from_the_config_object_the_node_manager_passes() -> None:
    class PlcConfig:
        PLC_SLICE_PREFIX = "ple"

    assert slice_prefix_of(None, "options", PlcConfig()) == "ple"
    assert slice_prefix_of(None, object()) is None

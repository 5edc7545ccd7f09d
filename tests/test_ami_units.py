"""The pure parts of `type: ami`: what the machine runs, how the disk is laid out, the
checksums EBS asks for, and the immutability rule. No Docker, AWS or disk."""

from __future__ import annotations

import base64
import hashlib
import shlex

import pytest

from builder import AmiVersionTaken, InvalidReference, UnsupportedBaseImage
from builder.ami import ami_name, check_existing
from builder.ami.blocks import linear_checksum
from builder.ami.bootable import (
    ImageConfig,
    bootable_dockerfile,
    distribution_of,
    final_base,
    hostname_for,
    kernel_files,
    loader_entry,
    resolve_executable,
    service_unit,
)
from builder.ami.ebs import ExistingImage
from builder.ami.layout import GiB, MiB, plan_disk, root_free_margin, sfdisk_script

MICROSERVICE_CONFIG = {"Config": {
    "Entrypoint": None,
    "Cmd": ["sh", "-c", "exec gunicorn --bind 0.0.0.0:${PORT} app:app"],
    "Env": ["PATH=/opt/venv/bin:/usr/bin:/bin", "PORT=8000", "GREETING=50% \"off\""],
    "WorkingDir": "/app",
    "User": "app:app",
}}


def unit_for(attributes, executables=("/usr/bin/sh",)):
    return service_unit(ImageConfig.from_inspect(attributes), description="orders 1.0.0",
                        is_executable=lambda path: path in executables)


def exec_start_argv(unit: str) -> list[str]:
    """ExecStart= as systemd reads it: $$ is $, %% is %, then shell-like quoting."""
    line = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart=").replace("$$", "$").replace("%%", "%"))


def test_the_unit_runs_cmd_as_docker_would_with_env_workdir_and_user():
    unit = unit_for(MICROSERVICE_CONFIG)
    assert exec_start_argv(unit) == ["/usr/bin/sh", "-c",
                                     "exec gunicorn --bind 0.0.0.0:${PORT} app:app"]
    assert "WorkingDirectory=/app" in unit.splitlines()
    assert "User=app" in unit.splitlines() and "Group=app" in unit.splitlines()
    assert 'Environment="PORT=8000"' in unit.splitlines()
    assert 'Environment="GREETING=50%% \\"off\\""' in unit.splitlines()
    assert "Restart=on-failure" in unit.splitlines()
    assert "WantedBy=multi-user.target" in unit.splitlines()


def test_the_shell_variables_of_cmd_reach_the_shell_not_systemd():
    """`${PORT}` is written `$${PORT}`: systemd leaves it for sh, as Docker does."""
    unit = unit_for(MICROSERVICE_CONFIG)
    assert "0.0.0.0:$${PORT}" in unit


def test_the_entrypoint_comes_before_cmd_and_is_found_in_the_images_path():
    attributes = {"Config": {"Entrypoint": ["gunicorn"], "Cmd": ["app:app"],
                             "Env": ["PATH=/opt/venv/bin:/usr/bin"]}}
    unit = unit_for(attributes, executables=("/opt/venv/bin/gunicorn",))
    assert exec_start_argv(unit) == ["/opt/venv/bin/gunicorn", "app:app"]
    assert "WorkingDirectory=/" in unit.splitlines()
    assert not any(line.startswith("User=") for line in unit.splitlines())


def test_a_relative_command_is_resolved_against_the_workdir():
    assert resolve_executable("./run.sh", "/bin", "/srv/app", lambda p: False) == \
        "/srv/app/run.sh"


def test_an_image_without_entrypoint_or_cmd_is_refused_with_what_to_add():
    with pytest.raises(UnsupportedBaseImage, match="add a CMD"):
        unit_for({"Config": {"Cmd": None, "Entrypoint": None}})


@pytest.mark.parametrize(("os_release", "expected"), [
    ('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n', "debian"),
    ('NAME="Ubuntu"\nID=ubuntu\nID_LIKE=debian\n', "ubuntu"),
    ('ID=linuxmint\nID_LIKE="ubuntu debian"\n', "ubuntu"),
    ('ID=raspbian\nID_LIKE=debian\n', "debian"),
])
def test_debian_and_ubuntu_and_their_derivatives_are_supported(os_release, expected):
    assert distribution_of(os_release, image="x") == expected


@pytest.mark.parametrize("os_release", ['ID=alpine\nPRETTY_NAME="Alpine Linux v3.20"\n',
                                        'ID="rhel"\nID_LIKE="fedora"\n', None])
def test_other_bases_are_refused_naming_the_supported_ones(os_release):
    with pytest.raises(UnsupportedBaseImage) as caught:
        distribution_of(os_release, image="reg/orders:1.0.0")
    assert "Debian" in str(caught.value) and "Ubuntu" in str(caught.value)
    assert "reg/orders:1.0.0" in str(caught.value)


@pytest.mark.parametrize(("dockerfile", "base"), [
    ("FROM python:3.11-slim\nCMD x\n", "python:3.11-slim"),
    ("FROM python:3.11-slim AS build\nRUN x\nFROM build\nCMD x\n", "python:3.11-slim"),
    ("FROM --platform=linux/amd64 debian:12 as a\nFROM a AS b\nFROM \\\n  b\n", "debian:12"),
    ("FROM golang AS build\nFROM scratch\nCOPY --from=build /x /x\n", "scratch"),
    ("ARG BASE=debian\nFROM $BASE\n", None),
])
def test_the_base_of_the_last_stage_is_found_through_stage_names(dockerfile, base):
    assert final_base(dockerfile) == base


def test_the_bootable_layer_installs_a_cloud_kernel_systemd_and_runs_as_root():
    debian = bootable_dockerfile("sha256:abc", "debian")
    assert debian.startswith("FROM sha256:abc\nUSER root\n")
    assert "linux-image-cloud-amd64" in debian and "systemd-boot-efi" in debian
    assert "linux-image-aws" in bootable_dockerfile("sha256:abc", "ubuntu")


def test_the_boot_entry_mounts_root_by_partition_uuid_and_logs_to_the_serial_console():
    entry = loader_entry("Slipway", "abcd-1234")
    assert "root=PARTUUID=abcd-1234" in entry and "console=ttyS0" in entry
    assert "linux /vmlinuz\ninitrd /initrd.img\n" in entry


def test_the_newest_kernel_with_an_initramfs_is_chosen():
    names = ["vmlinuz-6.1.0-9-cloud-amd64", "initrd.img-6.1.0-9-cloud-amd64",
             "vmlinuz-6.1.0-10-cloud-amd64", "initrd.img-6.1.0-10-cloud-amd64",
             "vmlinuz-6.1.0-11-cloud-amd64", "config-6.1.0-11-cloud-amd64"]
    assert kernel_files(names) == ("vmlinuz-6.1.0-10-cloud-amd64",
                                   "initrd.img-6.1.0-10-cloud-amd64")


def test_the_disk_is_whole_gib_and_keeps_the_stated_margin_free():
    """400 MiB of files: 1 GiB; 1.5 GiB of files: 3 GiB (25 % free at least)."""
    small = plan_disk(400 * MiB, 30 * MiB, seed="s")
    assert small.size == GiB and small.gib == 1
    big = plan_disk(1536 * MiB, 30 * MiB, seed="s")
    assert big.size % GiB == 0
    usable = big.root_size * (1 - 0.05) - big.root_size / 64 - 64 * MiB
    assert usable - 1536 * MiB >= root_free_margin(1536 * MiB) == 384 * MiB
    assert big.esp_start == MiB and big.root_start == big.esp_start + big.esp_size
    assert big.root_start + big.root_size <= big.size - 33 * 512  # the backup GPT fits


def test_the_partition_uuids_are_the_same_for_the_same_name_and_revision():
    assert plan_disk(MiB, MiB, seed="a:1") == plan_disk(MiB, MiB, seed="a:1")
    assert plan_disk(MiB, MiB, seed="a:1").root_guid != plan_disk(MiB, MiB, seed="a:2").root_guid


def test_the_gpt_has_an_efi_system_partition_and_an_x86_64_root():
    disk = plan_disk(400 * MiB, 30 * MiB, seed="s")
    script = sfdisk_script(disk)
    assert "label: gpt" in script
    assert f"start=2048, size={disk.esp_size // 512}, " \
           "type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B" in script
    assert "type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709" in script


def test_the_aggregated_checksum_is_the_sha256_of_the_block_digests_in_order():
    digests = [hashlib.sha256(b"a").digest(), hashlib.sha256(b"b").digest()]
    expected = base64.b64encode(hashlib.sha256(digests[0] + digests[1]).digest()).decode()
    assert linear_checksum(digests) == expected


def test_the_ami_name_is_service_dash_version():
    assert ami_name("orders", "1.4.0") == "orders-1.4.0"
    assert ami_name("team/orders", "1.4.0-rc.1") == "team/orders-1.4.0-rc.1"
    with pytest.raises(InvalidReference):
        ami_name("o", "1" * 130)


def test_an_existing_ami_of_the_same_revision_is_reused_and_another_refused():
    mine = ExistingImage("ami-1", "available", "abc", {"revision": "abc"})
    assert check_existing(None, name="orders-1.0.0", revision="abc") is False
    assert check_existing(mine, name="orders-1.0.0", revision="abc") is True
    with pytest.raises(AmiVersionTaken, match="ami-1.*built from abc.*new version"):
        check_existing(mine, name="orders-1.0.0", revision="def")
    with pytest.raises(AmiVersionTaken, match="no recorded revision"):
        check_existing(ExistingImage("ami-2", "available", None, {}), name="o-1",
                       revision="abc")


def test_the_host_name_is_a_valid_label_made_of_the_service_name():
    assert hostname_for("team/orders-1.4.0") == "team-orders-1-4-0"
    assert hostname_for("___") == "slipway"

"""``driver: camera`` config: profiles, URLs, credentials, masks; errors with file:line."""

from __future__ import annotations

import pytest

from tepi.core.errors import ConfigError
from tepi.drivers.camera.config import CameraConfig, load_profile, profile_names
from tepi.gateway.configload import parse_config

HEAD = """\
gateway: {id: gw-1, data_dir: /tmp/x}
uplink: {url: "mqtt://127.0.0.1:1883"}
devices:
"""


def issues(devices: str, **kw: bool) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(HEAD + devices, "tepi.yaml", check_files=kw.get("check_files", False))
    return [str(i) for i in info.value.issues]


def camera(devices: str) -> CameraConfig:
    cfg = parse_config(HEAD + devices, "tepi.yaml", check_files=False)
    dev = cfg.devices[0]
    assert isinstance(dev, CameraConfig)
    return dev


def test_a_profile_and_a_host_make_the_urls() -> None:
    dev = camera("  - {id: cam-1, driver: camera, profile: hikvision, host: 10.0.0.5}\n")
    assert dev.url == "http://10.0.0.5/ISAPI/Streaming/channels/101/picture"
    assert dev.auth == "digest"  # the profile's default
    assert dev.kind == "snapshot"
    dev = camera(
        "  - {id: cam-1, driver: camera, profile: hikvision, host: 10.0.0.5, source: stream}\n"
    )
    assert dev.url == "rtsp://10.0.0.5:554/Streaming/Channels/102"
    assert dev.kind == "stream"
    # the device's own keys win over the profile's
    dev = camera(
        "  - {id: cam-1, driver: camera, profile: dahua, host: h, auth: basic, "
        "url: 'http://h/x.jpg'}\n"
    )
    assert (dev.url, dev.auth) == ("http://h/x.jpg", "basic")


def test_every_profile_loads_and_has_a_description() -> None:
    assert {"hikvision", "dahua", "axis", "onvif"} <= set(profile_names())
    for name in profile_names():
        assert load_profile(name)["description"]


def test_defaults_and_kind_from_the_scheme() -> None:
    dev = camera("  - {id: c, driver: camera, url: 'rtsp://h/live'}\n")
    assert dev.kind == "stream"
    assert (dev.poll_interval, dev.timeout, dev.snapshot_interval) == (10.0, 5.0, 300.0)
    assert dev.masks == []


@pytest.mark.parametrize(
    ("device", "expect"),
    [
        ("{id: c, driver: camera}", "set url (or profile and host)"),
        ("{id: c, driver: camera, url: 'ftp://h/x'}", "scheme must be http, https, rtsp"),
        ("{id: c, driver: camera, url: 'http://u:pw@h/x'}", "url holds credentials"),
        ("{id: c, driver: camera, profile: hikvison, host: h}", "did you mean 'hikvision'"),
        ("{id: c, driver: camera, profile: hikvision}", "needs host"),
        ("{id: c, driver: camera, profile: onvif, host: h}", "has no snapshot URL"),
        ("{id: c, driver: camera, url: 'rtsp://h/x', source: snapshot}", "needs an http(s)"),
        ("{id: c, driver: camera, url: 'http://h/x', ca_file: /ca}", "not https"),
        (
            "{id: c, driver: camera, url: 'http://h/x', password_file: /p, password_env: P}",
            "not both",
        ),
        ("{id: c, driver: camera, url: 'http://h/x', masks: [[[0, 0], [1, 1]]]}", "3 points"),
        (
            "{id: c, driver: camera, url: 'http://h/x', masks: [[[0, 0], [1.5, 0], [0, 1]]]}",
            "outside 0..1",
        ),
        ("{id: c, driver: camera, url: 'http://h/x', snapshot_qualty: 5}", "snapshot_qualty"),
    ],
)
def test_bad_camera_configs_are_refused_with_file_and_line(device: str, expect: str) -> None:
    found = issues(f"  - {device}\n")
    assert any(expect in i for i in found), found
    assert all(i.startswith("tepi.yaml:4") for i in found), found


def test_the_password_file_is_checked_and_never_echoed(tmp_path: object) -> None:
    found = issues(
        "  - {id: c, driver: camera, url: 'http://h/x', username: u, "
        "password_file: /nonexistent/cam-pw}\n",
        check_files=True,
    )
    assert any("devices[0].password_file" in i and "does not exist" in i for i in found), found


def test_the_password_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAM_PW", "s3cret")
    dev = camera("  - {id: c, driver: camera, url: 'http://h/x', password_env: CAM_PW}\n")
    pw = dev.read_password()
    assert pw is not None
    assert pw.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(dev)


ANALYTICS = """\
  - id: cam-1
    driver: camera
    url: rtsp://10.0.0.5/sub
    analytics:
      lines:
        - {name: lane1, points: [[0.5, 0.1], [0.5, 0.45]]}
      zones:
        - name: approach
          polygon: [[0.0, 0.5], [0.5, 0.5], [0.5, 0.9], [0.0, 0.9]]
          stop_line: [[0.5, 0.5], [0.5, 0.9]]
          length_m: 40
      classes:
        - {name: two_wheeler, max_area: 0.004}
        - {name: bus_truck}
        - {name: car, max_area: 0.03}
"""


def test_analytics_config_and_its_stream_decodes_every_frame() -> None:
    dev = camera(ANALYTICS)
    a = dev.analytics
    assert a is not None
    assert (a.fps, a.width, a.count_interval, a.motion_off_delay) == (5.0, 320, 60.0, 5.0)
    assert a.lines[0].points == ((0.5, 0.1), (0.5, 0.45))
    assert a.zones[0].length_m == 40
    assert dev.decode is None
    assert dev.decode_mode == "all"  # analytics needs every frame; health alone keyframes
    assert camera("  - {id: c, driver: camera, url: rtsp://h/s}\n").decode_mode == "keyframes"


@pytest.mark.parametrize(
    ("change", "expect"),
    [
        (("url: rtsp://10.0.0.5/sub", "url: rtsp://10.0.0.5/sub\n    decode: keyframes"),
         "analytics needs every frame"),
        (("[0.5, 0.45]", "[1.5, 0.45]"), "line lane1: point [1.5, 0.45] is outside 0..1"),
        (("[[0.5, 0.1], [0.5, 0.45]]", "[[0.5, 0.1], [0.5, 0.1]]"), "its two points are the same"),
        (("          length_m: 40\n", ""), "queue_length needs both stop_line and length_m"),
        (("{name: bus_truck}", "{name: bus_truck}\n        - {name: big}"),
         "only one class can have no max_area"),
        (("      classes:",
          "        - name: approach\n          polygon: [[0, 0], [1, 0], [1, 1]]\n      classes:"),
         "zones: approach named more than once"),
        (("name: lane1,", "name: 'lane 1',"), "devices[0].analytics.lines[0].name"),
        (("length_m: 40", "length_m: -4"), "devices[0].analytics.zones[0].length_m"),
        (("    analytics:\n", "    analytics:\n      fps: 0\n"), "devices[0].analytics.fps"),
        (("      classes:", "      event_zones: [nowhere]\n      classes:"),
         "event_zones: no zone named nowhere"),
    ],
)  # fmt: skip
def test_bad_analytics_configs_are_refused_with_the_key(
    change: tuple[str, str], expect: str
) -> None:
    text = ANALYTICS.replace(*change)
    assert text != ANALYTICS
    found = issues(text)
    assert any(expect in i for i in found), found
    assert all("tepi.yaml:" in i for i in found), found

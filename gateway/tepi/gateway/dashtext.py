"""Every word the web console shows, in one table per language: English and Vietnamese (a
translation is one more table). Pages call :func:`t` with a key and its ``{placeholders}``,
in the request's language (:func:`use`, set by the console for each request: the user's
choice, else ``dashboard.language``, else the browser's Accept-Language); a key missing from
a language falls back to English (tests/test_gateway/test_dashtext.py checks that none is,
and that every placeholder is kept). The JavaScript modules carry no words: the server sends
what they show already worded. Messages that come from the agent itself (``tepi check``'s
problems, log lines, errors of devices) stay in English, as in the logs."""

from __future__ import annotations

import contextvars
import re

__all__ = ["LANGS", "NAMES", "STRINGS", "lang", "negotiate", "reset", "t", "use"]

LANGS = ("en", "vi")
NAMES = {"en": "English", "vi": "Tiếng Việt"}  # each in its own language, for the switch
_lang: contextvars.ContextVar[str] = contextvars.ContextVar("tepi_dashboard_lang", default="en")

STRINGS: dict[str, dict[str, str]] = {
    "en": {
        "title": "tepi {gateway}",
        "nav.overview": "Overview",
        "nav.devices": "Devices",
        "nav.logs": "Logs",
        "nav.alarms": "Alarms",
        "nav.config": "Config",
        "nav.commission": "Commissioning",
        "nav.logout": "Log out",
        "nav.user": "{user} ({role})",
        "login.title": "Log in",
        "login.user": "User",
        "login.password": "Password",
        "login.submit": "Log in",
        "login.failed": "Wrong user or password.",
        "login.locked": "Too many failed attempts. Try again in {seconds} s.",
        "login.expired": "The login form expired. Try again.",
        "login.nousers": "No users yet: on the box, run tepi dashboard passwd USER --role admin.",
        "ov.uplink": "Uplink",
        "ov.online": "online",
        "ov.offline": "OFFLINE",
        "ov.broker": "Broker",
        "ov.last_ack": "Last acknowledgement",
        "ov.connects": "Connects",
        "ov.rate": "Readings acknowledged",
        "ov.rate_value": "{rate} /s",
        "ov.link_errors": "Link errors",
        "ov.strip": "Link, last 24 h",
        "ov.strip_legend": "green: connected, red: not, grey: the agent was not running",
        "ov.buffer": "Buffer",
        "ov.depth": "Waiting",
        "ov.oldest": "Oldest",
        "ov.file": "File",
        "ov.file_value": "{used} of {max}",
        "ov.pending": "In RAM, not yet committed",
        "ov.dropped": "Dropped",
        "ov.depth_plot": "Waiting, since the page opened",
        "ov.oldest_plot": "Oldest waiting (s), since the page opened",
        "ov.process": "Box",
        "ov.cpu": "CPU (agent)",
        "ov.rss": "Memory (agent)",
        "ov.disk": "Disk free",
        "ov.clock": "Clock",
        "ov.synced": "synced",
        "ov.not_synced": "NOT synced",
        "ov.gps_offset": "GPS offset",
        "ov.uptime": "Agent up",
        "ov.version": "Version",
        "ov.problems": "Needs attention",
        "ov.all_well": "All is well.",
        "ov.reload": "Reload the config",
        "ov.reloaded": "Config reloaded.",
        "ov.reload_failed": "Reload refused: the config has problems (see Logs); the old one runs.",
        "ov.none": "none",
        "ov.never": "never",
        "dev.title": "Devices",
        "dev.device": "Device",
        "dev.state": "State",
        "dev.values": "Last values (last hour)",
        "dev.quarantined": "probed every {seconds} s",
        "dev.none": "No devices in the config.",
        "dev.no_values": "no values yet",
        "dev.bad_value": "BAD ({reason})",
        "dev.history_note": "Plots start when a page is first opened and keep the last hour.",
        "dev.wire": "Wire",
        "dev.counters": "Polls",
        "dev.polls": "Polls",
        "dev.readings": "Readings",
        "dev.bad": "Bad readings",
        "dev.missed": "Missed polls",
        "dev.last_poll": "Last poll",
        "dev.last_ok": "Last good poll",
        "dev.errors": "Errors",
        "dev.last_error": "Last error",
        "dev.unknown": "No device {device} in the config.",
        "dev.metrics": "Metrics",
        "dev.recent": "Recent warnings and errors",
        "logs.title": "Recent log lines",
        "logs.level": "At least",
        "logs.show": "Show",
        "logs.kept": "{shown} of {kept} kept lines ({seen} since start)",
        "logs.none": "No lines at this level.",
        "cfg.title": "Config",
        "cfg.file": "File",
        "cfg.running": "Running version",
        "cfg.trial": "On trial",
        "cfg.no_file": "The agent was started without a config file: nothing to show or apply.",
        "cfg.edit": "Edit",
        "cfg.check": "Check",
        "cfg.apply": "Apply",
        "cfg.applying": "Applying: confirmed or rolled back within {seconds} s...",
        "cfg.apply_hint": "Apply checks first: a config with problems changes nothing. Then it "
        "runs on trial: unless the uplink is connected and every device that worked still "
        "works within {seconds} s, the previous config comes back by itself.",
        "cfg.secrets_hint": "Secrets show as ***: a line left as shown keeps its secret; write "
        "a new value to change it.",
        "cfg.running_text": "The running config (secrets redacted)",
        "cfg.viewer_hint": "Only an admin can change it.",
        "cfg.history": "Changes",
        "cfg.no_history": "No change from here or the IOC yet: the base config runs.",
        "cfg.version": "Version",
        "cfg.when": "When",
        "cfg.by": "By",
        "cfg.state": "State",
        "cfg.why": "Why",
        "cfg.valid": "No problems found. Nothing changes until you apply it.",
        "cfg.problem": "1 problem; nothing changed.",
        "cfg.problems": "{n} problems; nothing changed.",
        "cfg.applied": "Applied and confirmed: {version}, in {seconds} s.",
        "cfg.restart_needed": "Applied ({version}); these need a restart of the agent: {keys}.",
        "cfg.rolled_back": "Rolled back: {detail}",
        "cfg.failed": "Not applied: {detail}",
        "cfg.back_to": "Go back to {version}",
        "cfg.back_to_base": "Go back to the base file",
        "cfg.going_back": "Going back: confirmed or rolled back...",
        "cfg.back_hint": "Going back to an earlier version is an apply like any other: kept as "
        "a new version, on trial, rolled back by itself unless confirmed. The base file is "
        "the one the agent was started with (--config).",
        "cfg.went_back": "Back to {version}'s config.",
        "cfg.bad_version": "Give a version kept on the box (v3) or base.",
        "al.title": "Alarms",
        "al.no_rules": "No rules in the config: no alarms.",
        "al.rule_1": "1 rule in the config.",
        "al.rules": "{n} rules in the config.",
        "al.active": "Firing",
        "al.recent": "Recent",
        "al.none_firing": "Nothing is firing.",
        "al.none_recent": "None.",
        "al.rule": "Rule",
        "al.state": "State",
        "al.where": "Device / metric",
        "al.value": "Value",
        "al.fired": "Fired",
        "al.count": "Times",
        "al.ack_col": "Acknowledged",
        "al.ack": "Acknowledge",
        "al.acked_by": "by {by}",
        "al.not_acked": "not yet",
        "al.resolved": "resolved {when}",
        "al.acked": "Alarm {rule} acknowledged.",
        "al.not_ackable": "Alarm {rule} was not firing, or was already acknowledged.",
        "al.unknown": "No alarm for rule {rule}.",
        "com.title": "Commissioning",
        "com.intro": "The tepi scan and tepi read tools, from the box. A serial port a "
        "configured device uses is refused: two masters on one line garble each other.",
        "com.scan": "Scan: which units answer",
        "com.read": "Read: every decoding of some registers",
        "com.port": "Port",
        "com.framing": "TCP framing",
        "com.units": "Units",
        "com.unit": "Unit",
        "com.baud": "Baud (or auto)",
        "com.baud_read": "Baud (serial)",
        "com.timeout": "Wait per unit (s)",
        "com.table": "Table",
        "com.address": "Address (0-based)",
        "com.count": "Count",
        "com.scan_go": "Scan",
        "com.read_go": "Read",
        "com.scanning": "Asked {done} of {total} units{baud}...",
        "com.at_baud": " at {baud} baud",
        "com.found": "{n} unit(s) answered on {port}.",
        "com.none_found": "No unit answered on {port}. Check the wiring (A/B swapped?), the "
        "termination, the unit ids, and that nothing else uses the port.",
        "com.answers": "unit {unit}{baud}: answers ({answer})",
        "com.use": "Read it",
        "com.read_result": "Unit {unit} on {port}",
        "com.exception": "Unit {unit} answered {reason}.",
        "com.add": "Add a device",
        "com.add_go": "Add to the config and apply",
        "com.adding": "Applying: confirmed or rolled back...",
        "com.add_hint": "The device's YAML (a read fills it in: give it an id and name its "
        "registers). It is added to the running config and applied as on the config page: "
        "checked, then on trial, rolled back unless confirmed.",
        "com.profile": "Profile",
        "com.no_profile": "(none: the registers in the YAML)",
        "com.profiles": "Profiles",
        "com.profiles_hint": "Register maps the box knows (tepi profiles). Chosen in the form "
        "above, its registers come first; registers in the YAML add to them, or change one "
        "of the same name.",
        "com.no_port": "Give a port: /dev/ttyUSB0, or host:port.",
        "com.port_busy": "{port} is the port of the configured device {device}: scan or read "
        "it with the agent's polling stopped, or another port.",
        "com.scan_busy": "A scan is running; wait for its end.",
        "com.scan_stopped": "The gateway is stopping: the scan ended early.",
        "com.bad_number": "{field}: not a valid value.",
        "com.not_yaml": "Not YAML: {error}",
        "com.not_device": "Give one device (a mapping with id, driver, ...) or a list of them.",
        "nav.cameras": "Cameras",
        "cam.title": "Cameras",
        "cam.none": "No cameras in the config.",
        "cam.camera": "Camera",
        "cam.health": "Health",
        "cam.healthy": "all checks pass",
        "cam.snapshots": "Snapshots",
        "cam.snapshot_errors": "Snapshot errors",
        "cam.unknown": "No camera {camera} in the config.",
        "cam.images": "Images waiting to be sent",
        "cam.waiting": "Waiting",
        "cam.waiting_by_class": "By class",
        "cam.waiting_for": "Held back by",
        "cam.sent": "Sent",
        "cam.dropped": "Dropped",
        "cam.alt": "The latest snapshot of {camera}, its privacy masks filled",
        "cam.no_shot": "No snapshot is held (the IOC has the last one): take one to see the "
        "camera's picture.",
        "cam.take": "Take a snapshot",
        "cam.taking": "Taking a snapshot...",
        "cam.taken": "Snapshot {seq} taken (it goes to the IOC too).",
        "cam.snapshot_failed": "No snapshot: {error}",
        "cam.shot_after": "Snapshot {seq} taken with it.",
        "cam.overlay": "Masks, counting lines and zones",
        "cam.legend": "Black: privacy masks (filled before any pixel is stored or sent). "
        "Yellow arrows: counting lines (crossing from the arrow's left to its right counts "
        "in). Blue: zones. Grey: ignore areas (motion there is not analysed).",
        "cam.tools": "Drawing tools",
        "cam.tool_mask": "Draw a mask",
        "cam.tool_ignore": "Draw an ignore area",
        "cam.tool_line": "Draw a line",
        "cam.tool_zone": "Draw a zone",
        "cam.close_shape": "Close the shape",
        "cam.undo": "Undo the last point",
        "cam.hint_none": "Choose a tool, then click on the picture.",
        "cam.hint_mask": "Click the mask's corners; close it with the button or on its first "
        "corner.",
        "cam.hint_ignore": "Click the corners of an area where motion is ignored (trees, "
        "flags, a screen); unlike a mask it is not blacked out. Close it with the button or on "
        "its first corner.",
        "cam.hint_line": "Click where the line starts, then where it ends: crossing it from "
        "the arrow's left to its right counts in.",
        "cam.hint_zone": "Click the zone's corners; close it with the button or on its first "
        "corner.",
        "cam.shape_mask": "Mask {n}",
        "cam.shape_ignore": "Ignore area {n}",
        "cam.shape_line": "Line",
        "cam.shape_zone": "Zone",
        "cam.name": "Name",
        "cam.length": "Length (m)",
        "cam.stop_draw": "Draw its stop line",
        "cam.stop_remove": "Remove the stop line",
        "cam.hint_stop": "Click the stop line's two ends: where the queue starts. With the "
        "zone's length in metres (from the stop line to its far end), the zone reports "
        "queue_length.",
        "cam.bad_length": "{what}: the length is metres, more than 0 and at most 10,000.",
        "cam.delete": "Delete",
        "cam.save": "Save and apply",
        "cam.saving": "Applying; waiting for the devices to confirm...",
        "cam.save_hint": "Saving puts the shapes in the config and applies it as the config "
        "page does: checked, on trial, rolled back by itself unless the camera and the uplink "
        "work with it. A snapshot is then taken, with the new masks applied by the agent.",
        "cam.bad_point": "{what}: a point is not [x, y] within 0..1 of the picture.",
        "cam.bad_points": "{what}: needs {lo} to {hi} points.",
        "cam.bad_name": "{what}: give a name of letters, digits, _ or - (at most 32).",
        "cam.named_twice": "Named more than once: {names}.",
        "cam.too_big": "Too many shapes or points.",
        "cam.too_many": "At most {n} shapes of each kind.",
        "cam.not_geometry": "The page sent no shapes it could read: reload it and draw again.",
        "cam.not_in_file": "Camera {camera} is not in the config file's own devices (an "
        "included file?): edit it on the config page.",
        "ago.never": "never",
        "ago.s": "{n} s ago",
        "ago.min": "{n} min ago",
        "ago.h": "{n} h ago",
        "for.s": "{n} s",
        "for.min": "{n} min",
        "for.h": "{n} h",
        "err.forbidden": "Only an admin may do that.",
        "err.csrf": "This form is stale: reload the page and try again.",
        "err.host": "This host name is not allowed here.",
        "err.login": "Log in first.",
        "err.lang": "No such language here.",
        "nav.lang": "Language",
        "live.lost": "Live updates lost; retrying.",
    },
    "vi": {
        "title": "tepi {gateway}",
        "nav.overview": "Tổng quan",
        "nav.devices": "Thiết bị",
        "nav.logs": "Nhật ký",
        "nav.alarms": "Cảnh báo",
        "nav.config": "Cấu hình",
        "nav.commission": "Lắp đặt",
        "nav.logout": "Đăng xuất",
        "nav.user": "{user} ({role})",
        "nav.cameras": "Camera",
        "login.title": "Đăng nhập",
        "login.user": "Tài khoản",
        "login.password": "Mật khẩu",
        "login.submit": "Đăng nhập",
        "login.failed": "Sai tài khoản hoặc mật khẩu.",
        "login.locked": "Sai quá nhiều lần. Thử lại sau {seconds} giây.",
        "login.expired": "Biểu mẫu đăng nhập đã hết hạn. Hãy thử lại.",
        "login.nousers": "Chưa có tài khoản nào: trên thiết bị, chạy tepi dashboard passwd USER "
        "--role admin.",
        "ov.uplink": "Kết nối về trung tâm",
        "ov.online": "trực tuyến",
        "ov.offline": "MẤT KẾT NỐI",
        "ov.broker": "Broker",
        "ov.last_ack": "Xác nhận gần nhất",
        "ov.connects": "Số lần kết nối",
        "ov.rate": "Số đọc được xác nhận",
        "ov.rate_value": "{rate} /giây",
        "ov.link_errors": "Lỗi đường truyền",
        "ov.strip": "Đường truyền, 24 giờ qua",
        "ov.strip_legend": "xanh: có kết nối, đỏ: mất, xám: agent không chạy",
        "ov.buffer": "Bộ đệm",
        "ov.depth": "Đang chờ",
        "ov.oldest": "Cũ nhất",
        "ov.file": "Tệp",
        "ov.file_value": "{used} / {max}",
        "ov.pending": "Trong RAM, chưa ghi xuống đĩa",
        "ov.dropped": "Đã bỏ",
        "ov.depth_plot": "Đang chờ, từ khi mở trang",
        "ov.oldest_plot": "Tuổi số đọc cũ nhất (giây), từ khi mở trang",
        "ov.process": "Thiết bị gateway",
        "ov.cpu": "CPU (agent)",
        "ov.rss": "Bộ nhớ (agent)",
        "ov.disk": "Đĩa còn trống",
        "ov.clock": "Đồng hồ",
        "ov.synced": "đã đồng bộ",
        "ov.not_synced": "CHƯA đồng bộ",
        "ov.gps_offset": "Lệch so với GPS",
        "ov.uptime": "Agent đã chạy",
        "ov.version": "Phiên bản",
        "ov.problems": "Cần chú ý",
        "ov.all_well": "Mọi thứ bình thường.",
        "ov.reload": "Nạp lại cấu hình",
        "ov.reloaded": "Đã nạp lại cấu hình.",
        "ov.reload_failed": "Không nạp lại được: cấu hình có lỗi (xem Nhật ký); cấu hình cũ vẫn "
        "chạy.",
        "ov.none": "không có",
        "ov.never": "chưa bao giờ",
        "dev.title": "Thiết bị",
        "dev.device": "Thiết bị",
        "dev.state": "Trạng thái",
        "dev.values": "Giá trị gần nhất (1 giờ qua)",
        "dev.quarantined": "thử lại mỗi {seconds} giây",
        "dev.none": "Không có thiết bị nào trong cấu hình.",
        "dev.no_values": "chưa có giá trị",
        "dev.bad_value": "LỖI ({reason})",
        "dev.history_note": "Biểu đồ bắt đầu khi trang được mở lần đầu và giữ 1 giờ gần nhất.",
        "dev.wire": "Đường truyền thiết bị",
        "dev.counters": "Lần đọc",
        "dev.polls": "Lần đọc",
        "dev.readings": "Số đọc",
        "dev.bad": "Số đọc lỗi",
        "dev.missed": "Lần đọc bị lỡ",
        "dev.last_poll": "Lần đọc gần nhất",
        "dev.last_ok": "Lần đọc tốt gần nhất",
        "dev.errors": "Lỗi",
        "dev.last_error": "Lỗi gần nhất",
        "dev.unknown": "Không có thiết bị {device} trong cấu hình.",
        "dev.metrics": "Chỉ số",
        "dev.recent": "Cảnh báo và lỗi gần đây",
        "logs.title": "Nhật ký gần đây",
        "logs.level": "Mức tối thiểu",
        "logs.show": "Xem",
        "logs.kept": "{shown} / {kept} dòng đang giữ ({seen} dòng từ khi khởi động)",
        "logs.none": "Không có dòng nào ở mức này.",
        "cfg.title": "Cấu hình",
        "cfg.file": "Tệp",
        "cfg.running": "Phiên bản đang chạy",
        "cfg.trial": "Đang chạy thử",
        "cfg.no_file": "Agent được khởi động không có tệp cấu hình: không có gì để xem hay áp "
        "dụng.",
        "cfg.edit": "Sửa",
        "cfg.check": "Kiểm tra",
        "cfg.apply": "Áp dụng",
        "cfg.applying": "Đang áp dụng: được xác nhận hoặc tự quay lại trong {seconds} giây...",
        "cfg.apply_hint": "Áp dụng sẽ kiểm tra trước: cấu hình có lỗi thì không thay đổi gì. Sau "
        "đó nó chạy thử: nếu trong {seconds} giây kết nối lên không thông, hoặc một thiết bị đang "
        "hoạt động bị ngừng, cấu hình trước sẽ tự quay lại.",
        "cfg.secrets_hint": "Thông tin bí mật hiển thị là ***: giữ nguyên dòng đó thì giữ nguyên "
        "bí mật; viết giá trị mới để thay đổi.",
        "cfg.running_text": "Cấu hình đang chạy (đã che thông tin bí mật)",
        "cfg.viewer_hint": "Chỉ quản trị viên mới thay đổi được.",
        "cfg.history": "Các thay đổi",
        "cfg.no_history": "Chưa có thay đổi nào từ đây hay từ IOC: cấu hình gốc đang chạy.",
        "cfg.version": "Phiên bản",
        "cfg.when": "Thời điểm",
        "cfg.by": "Người thực hiện",
        "cfg.state": "Trạng thái",
        "cfg.why": "Lý do",
        "cfg.valid": "Không có lỗi. Chưa có gì thay đổi cho đến khi bạn áp dụng.",
        "cfg.problem": "1 lỗi; không có gì thay đổi.",
        "cfg.problems": "{n} lỗi; không có gì thay đổi.",
        "cfg.applied": "Đã áp dụng và xác nhận: {version}, trong {seconds} giây.",
        "cfg.restart_needed": "Đã áp dụng ({version}); các mục này cần khởi động lại agent: "
        "{keys}.",
        "cfg.rolled_back": "Đã quay lại cấu hình trước: {detail}",
        "cfg.failed": "Chưa áp dụng: {detail}",
        "cfg.back_to": "Quay lại {version}",
        "cfg.back_to_base": "Quay lại tệp gốc",
        "cfg.going_back": "Đang quay lại: được xác nhận hoặc tự quay lại...",
        "cfg.back_hint": "Quay lại một phiên bản trước cũng là một lần áp dụng: được lưu thành "
        "phiên bản mới, chạy thử, tự quay lại nếu không được xác nhận. Tệp gốc là tệp agent được "
        "khởi động cùng (--config).",
        "cfg.went_back": "Đã quay lại cấu hình {version}.",
        "cfg.bad_version": "Hãy chọn một phiên bản được lưu trên thiết bị (v3) hoặc base.",
        "al.title": "Cảnh báo",
        "al.no_rules": "Không có quy tắc nào trong cấu hình: không có cảnh báo.",
        "al.rule_1": "1 quy tắc trong cấu hình.",
        "al.rules": "{n} quy tắc trong cấu hình.",
        "al.active": "Đang cảnh báo",
        "al.recent": "Gần đây",
        "al.none_firing": "Không có cảnh báo nào.",
        "al.none_recent": "Không có.",
        "al.rule": "Quy tắc",
        "al.state": "Trạng thái",
        "al.where": "Thiết bị / chỉ số",
        "al.value": "Giá trị",
        "al.fired": "Bắt đầu",
        "al.count": "Số lần",
        "al.ack_col": "Đã xác nhận",
        "al.ack": "Xác nhận",
        "al.acked_by": "bởi {by}",
        "al.not_acked": "chưa",
        "al.resolved": "hết {when}",
        "al.acked": "Đã xác nhận cảnh báo {rule}.",
        "al.not_ackable": "Cảnh báo {rule} không còn, hoặc đã được xác nhận.",
        "al.unknown": "Không có cảnh báo cho quy tắc {rule}.",
        "com.title": "Lắp đặt",
        "com.intro": "Các công cụ tepi scan và tepi read, chạy trên thiết bị. Cổng nối tiếp mà "
        "một thiết bị đã cấu hình đang dùng sẽ bị từ chối: hai master trên một đường dây làm hỏng "
        "khung tin của nhau.",
        "com.scan": "Quét: những unit nào trả lời",
        "com.read": "Đọc: mọi cách giải mã của vài thanh ghi",
        "com.port": "Cổng",
        "com.framing": "Khung TCP",
        "com.units": "Các unit",
        "com.unit": "Unit",
        "com.baud": "Baud (hoặc auto)",
        "com.baud_read": "Baud (nối tiếp)",
        "com.timeout": "Chờ mỗi unit (giây)",
        "com.table": "Bảng",
        "com.address": "Địa chỉ (từ 0)",
        "com.count": "Số lượng",
        "com.scan_go": "Quét",
        "com.read_go": "Đọc",
        "com.scanning": "Đã hỏi {done} / {total} unit{baud}...",
        "com.at_baud": " ở {baud} baud",
        "com.found": "{n} unit trả lời trên {port}.",
        "com.none_found": "Không unit nào trả lời trên {port}. Kiểm tra dây (đảo A/B?), điện trở "
        "đầu cuối, số unit, và không có gì khác đang dùng cổng.",
        "com.answers": "unit {unit}{baud}: trả lời ({answer})",
        "com.use": "Đọc unit này",
        "com.read_result": "Unit {unit} trên {port}",
        "com.exception": "Unit {unit} trả lời {reason}.",
        "com.add": "Thêm thiết bị",
        "com.add_go": "Thêm vào cấu hình và áp dụng",
        "com.adding": "Đang áp dụng: được xác nhận hoặc tự quay lại...",
        "com.add_hint": "YAML của thiết bị (một lần đọc sẽ điền sẵn: đặt id và tên cho các thanh "
        "ghi). Nó được thêm vào cấu hình đang chạy và áp dụng như ở trang cấu hình: kiểm tra, "
        "chạy thử, tự quay lại nếu không được xác nhận.",
        "com.profile": "Hồ sơ thiết bị",
        "com.no_profile": "(không: các thanh ghi trong YAML)",
        "com.profiles": "Hồ sơ thiết bị",
        "com.profiles_hint": "Các bảng thanh ghi thiết bị biết (tepi profiles). Chọn ở biểu mẫu "
        "trên, các thanh ghi của nó đi trước; thanh ghi trong YAML được thêm vào, hoặc thay thế "
        "thanh ghi cùng tên.",
        "com.no_port": "Nhập cổng: /dev/ttyUSB0, hoặc host:port.",
        "com.port_busy": "{port} là cổng của thiết bị đã cấu hình {device}: hãy quét hay đọc khi "
        "agent ngừng đọc nó, hoặc dùng cổng khác.",
        "com.scan_busy": "Đang có một lần quét; hãy chờ nó xong.",
        "com.scan_stopped": "Gateway đang dừng: lần quét đã kết thúc sớm.",
        "com.bad_number": "{field}: giá trị không hợp lệ.",
        "com.not_yaml": "Không phải YAML: {error}",
        "com.not_device": "Nhập một thiết bị (một mapping có id, driver, ...) hoặc một danh sách "
        "thiết bị.",
        "cam.title": "Camera",
        "cam.none": "Không có camera nào trong cấu hình.",
        "cam.camera": "Camera",
        "cam.health": "Tình trạng",
        "cam.healthy": "mọi kiểm tra đều đạt",
        "cam.snapshots": "Ảnh chụp",
        "cam.snapshot_errors": "Lỗi chụp ảnh",
        "cam.unknown": "Không có camera {camera} trong cấu hình.",
        "cam.images": "Ảnh đang chờ gửi",
        "cam.waiting": "Đang chờ",
        "cam.waiting_by_class": "Theo loại",
        "cam.waiting_for": "Bị giữ lại bởi",
        "cam.sent": "Đã gửi",
        "cam.dropped": "Đã bỏ",
        "cam.alt": "Ảnh chụp gần nhất của {camera}, các vùng che riêng tư đã được tô",
        "cam.no_shot": "Không còn giữ ảnh chụp nào (IOC đã nhận ảnh gần nhất): chụp một ảnh để "
        "xem hình của camera.",
        "cam.take": "Chụp ảnh",
        "cam.taking": "Đang chụp ảnh...",
        "cam.taken": "Đã chụp ảnh {seq} (ảnh cũng được gửi về IOC).",
        "cam.snapshot_failed": "Không chụp được: {error}",
        "cam.shot_after": "Đã chụp ảnh {seq} kèm theo.",
        "cam.overlay": "Vùng che, vạch đếm và vùng",
        "cam.legend": "Đen: vùng che riêng tư (được tô trước khi bất kỳ điểm ảnh nào được lưu hay "
        "gửi). Mũi tên vàng: vạch đếm (đi qua từ bên trái mũi tên sang bên phải được đếm là vào). "
        "Xanh: vùng. Xám: vùng bỏ qua (chuyển động ở đó không được phân tích).",
        "cam.tools": "Công cụ vẽ",
        "cam.tool_mask": "Vẽ vùng che",
        "cam.tool_ignore": "Vẽ vùng bỏ qua",
        "cam.tool_line": "Vẽ vạch đếm",
        "cam.tool_zone": "Vẽ vùng",
        "cam.close_shape": "Đóng hình",
        "cam.undo": "Bỏ điểm cuối",
        "cam.hint_none": "Chọn một công cụ, rồi bấm lên hình.",
        "cam.hint_mask": "Bấm vào các góc của vùng che; đóng lại bằng nút hoặc bấm vào góc đầu "
        "tiên.",
        "cam.hint_ignore": "Bấm vào các góc của vùng mà chuyển động bị bỏ qua (cây, cờ, màn "
        "hình); khác với vùng che, nó không bị tô đen. Đóng lại bằng nút hoặc bấm vào góc đầu "
        "tiên.",
        "cam.hint_line": "Bấm nơi vạch bắt đầu, rồi nơi vạch kết thúc: đi qua từ bên trái mũi tên "
        "sang bên phải được đếm là vào.",
        "cam.hint_zone": "Bấm vào các góc của vùng; đóng lại bằng nút hoặc bấm vào góc đầu tiên.",
        "cam.shape_mask": "Vùng che {n}",
        "cam.shape_ignore": "Vùng bỏ qua {n}",
        "cam.shape_line": "Vạch",
        "cam.shape_zone": "Vùng",
        "cam.name": "Tên",
        "cam.length": "Chiều dài (m)",
        "cam.stop_draw": "Vẽ vạch dừng",
        "cam.stop_remove": "Bỏ vạch dừng",
        "cam.hint_stop": "Bấm vào hai đầu của vạch dừng: nơi hàng xe bắt đầu. Cùng với chiều "
        "dài của vùng tính bằng mét (từ vạch dừng đến đầu xa), vùng sẽ báo queue_length.",
        "cam.bad_length": "{what}: chiều dài tính bằng mét, lớn hơn 0 và tối đa 10.000.",
        "cam.delete": "Xóa",
        "cam.save": "Lưu và áp dụng",
        "cam.saving": "Đang áp dụng; chờ các thiết bị xác nhận...",
        "cam.save_hint": "Lưu sẽ đưa các hình vào cấu hình và áp dụng như trang cấu hình: kiểm "
        "tra, chạy thử, tự quay lại nếu camera và kết nối lên không hoạt động với nó. Sau đó một "
        "ảnh được chụp, với vùng che mới do agent áp dụng.",
        "cam.bad_point": "{what}: có điểm không phải [x, y] trong khoảng 0..1 của hình.",
        "cam.bad_points": "{what}: cần từ {lo} đến {hi} điểm.",
        "cam.bad_name": "{what}: đặt tên bằng chữ cái, chữ số, _ hoặc - (tối đa 32).",
        "cam.named_twice": "Tên bị trùng: {names}.",
        "cam.too_big": "Quá nhiều hình hoặc điểm.",
        "cam.too_many": "Tối đa {n} hình mỗi loại.",
        "cam.not_geometry": "Trang gửi lên dữ liệu hình không đọc được: tải lại trang và vẽ lại.",
        "cam.not_in_file": "Camera {camera} không nằm trong danh sách thiết bị của chính tệp cấu "
        "hình (ở tệp được include?): hãy sửa ở trang cấu hình.",
        "ago.never": "chưa bao giờ",
        "ago.s": "{n} giây trước",
        "ago.min": "{n} phút trước",
        "ago.h": "{n} giờ trước",
        "for.s": "{n} giây",
        "for.min": "{n} phút",
        "for.h": "{n} giờ",
        "err.forbidden": "Chỉ quản trị viên mới được làm việc này.",
        "err.csrf": "Biểu mẫu này đã cũ: tải lại trang rồi thử lại.",
        "err.host": "Tên máy này không được phép ở đây.",
        "err.login": "Hãy đăng nhập trước.",
        "err.lang": "Không có ngôn ngữ này.",
        "nav.lang": "Ngôn ngữ",
        "live.lost": "Mất cập nhật trực tiếp; đang thử lại.",
    },
}


def t(key: str, **values: object) -> str:
    """The text of ``key`` in the request's language (else English), with ``values`` filled
    in."""
    text = STRINGS[_lang.get()].get(key) or STRINGS["en"][key]
    return text.format(**values) if values else text


def lang() -> str:
    """The language of this request's pages."""
    return _lang.get()


def use(code: str) -> contextvars.Token[str]:
    """Words in ``code`` (one of :data:`LANGS`) from here in this context (a request's task)."""
    return _lang.set(code if code in LANGS else "en")


def reset(token: contextvars.Token[str]) -> None:
    """Back to the language before :func:`use` gave ``token``."""
    _lang.reset(token)


_TAG = re.compile(r"\s*([A-Za-z]{1,8})(?:-[A-Za-z0-9]{1,8})*\s*(?:;\s*q\s*=\s*([0-9.]{1,5}))?\s*")


def negotiate(chosen: str | None, configured: str, accept: str | None) -> str:
    """The language of a request: the user's choice (``chosen``, the console's cookie) if it
    is one of :data:`LANGS`; else ``configured`` (``dashboard.language``) unless ``auto``;
    else the first of :data:`LANGS` in the browser's Accept-Language by its weights; else
    English."""
    if chosen in LANGS:
        return str(chosen)
    if configured in LANGS:
        return configured
    best, weight = "en", 0.0
    for part in (accept or "")[:512].split(","):
        m = _TAG.fullmatch(part)
        if m is None:
            continue
        try:
            q = float(m.group(2)) if m.group(2) else 1.0
        except ValueError:
            continue
        code = m.group(1).lower()
        if code in LANGS and q > weight:
            best, weight = code, q
    return best

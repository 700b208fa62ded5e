"""Reading what livemig needs out of libvirt domain XML."""
from __future__ import annotations

import xml.etree.ElementTree as ET

from livemig.drivers.base import DiskInfo, InterfaceInfo

METADATA_NS = "https://livemig.dev/xmlns/domain/1"


def parse_disks(root: ET.Element) -> list[DiskInfo]:
    disks = []
    for disk in root.findall("./devices/disk"):
        if disk.get("device", "disk") not in ("disk", "lun"):
            continue
        kind = disk.get("type", "file")
        source = disk.find("source")
        target = disk.find("target")
        info = DiskInfo(target=target.get("dev", "?") if target is not None else "?", kind=kind, source="")
        if source is not None:
            if kind == "network":
                info.protocol = source.get("protocol")
                info.hosts = [[h.get("name"), int(h.get("port", "0") or 0)] for h in source.findall("host")]
                first = info.hosts[0] if info.hosts else ["?", 0]
                info.source = f"{info.protocol}://{first[0]}:{first[1]}/{source.get('name', '')}"
            else:
                info.source = source.get("file") or source.get("dev") or source.get("name") or ""
            secret = source.find("./auth/secret")
            if secret is None:
                secret = disk.find("./auth/secret")  # the older placement
            if secret is not None:
                info.secret_usage = secret.get("usage")
                info.secret_type = secret.get("type")
        disks.append(info)
    return disks


def parse_interfaces(root: ET.Element) -> list[InterfaceInfo]:
    interfaces = []
    for iface in root.findall("./devices/interface"):
        mac = iface.find("mac")
        source = iface.find("source")
        info = InterfaceInfo(mac=mac.get("address", "") if mac is not None else "")
        kind = iface.get("type")
        if source is not None:
            if kind == "bridge":
                info.bridge = source.get("bridge")
            elif kind == "network":
                info.network = source.get("network")
        tag = iface.find("./vlan/tag")
        if tag is not None:
            info.vlan = int(tag.get("id", "0"))
        filterref = iface.find("filterref")
        if filterref is not None:
            info.filter = filterref.get("filter")
            for param in filterref.findall("parameter"):
                if param.get("name") == "IP":
                    info.ip = param.get("value")
        interfaces.append(info)
    return interfaces


def parse_project(root: ET.Element) -> str:
    project = root.find(f"./metadata/{{{METADATA_NS}}}instance/{{{METADATA_NS}}}project")
    return project.text.strip() if project is not None and project.text else "default"


def parse_group(root: ET.Element) -> str | None:
    """The anti-affinity group label: <livemig:group> in the livemig metadata."""
    group = root.find(f"./metadata/{{{METADATA_NS}}}instance/{{{METADATA_NS}}}group")
    return group.text.strip() if group is not None and group.text and group.text.strip() else None


def parse_labels(root: ET.Element) -> dict[str, str]:
    """<livemig:label name="KEY">VALUE</livemig:label> in the livemig
    metadata: what migration policy rules match."""
    labels = {}
    for label in root.findall(f"./metadata/{{{METADATA_NS}}}instance/{{{METADATA_NS}}}label"):
        key = (label.get("name") or "").strip()
        if key:
            labels[key] = (label.text or "").strip()
    return labels


def parse_cpu_model(root: ET.Element) -> str | None:
    model = root.find("./cpu/model")
    if model is not None and model.text:
        return model.text.strip()
    cpu = root.find("./cpu")
    return f"({cpu.get('mode')})" if cpu is not None and cpu.get("mode") else None


def strip_uuid(xml: str) -> str:
    """Filter/secret XML without its per-host UUID, canonical for comparison."""
    root = ET.fromstring(xml)
    for uuid in root.findall("uuid"):
        root.remove(uuid)
    for elem in root.iter():
        if elem.text is not None and not elem.text.strip():
            elem.text = None
        if elem.tail is not None and not elem.tail.strip():
            elem.tail = None
    return ET.tostring(root, encoding="unicode")

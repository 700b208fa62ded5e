"""The scheduler: every filter and weigher, the refusal texts, determinism,
anti-affinity, capacity counted across a plan, largest first; and the
snapshot read from a synced fake cloud."""
from __future__ import annotations

import dataclasses
import random

import pytest

import livemig
from livemig.drivers.base import InterfaceInfo
from livemig.errors import InvalidInput
from livemig.persistence.database import database_for
from livemig.persistence.models import Host, Instance, Migration
from livemig.scheduler import Disk, HostState, InstanceRequest, Snapshot, plan, select
from livemig.scheduler.inventory import snapshot as read_snapshot
from livemig.scheduler.select import choose_with_slots
from livemig.states import MigrationStatus


def host(name: str, **changes) -> HostState:
    base = HostState(name=name, zone="z1", enabled=True, maintenance=False, vcpus_total=16.0,
                     memory_mb_total=16384.0, disk_gb_total=100.0, vcpus_used=0, memory_mb_used=0, disk_gb_used=0,
                     cpu_model="Skylake", hypervisor_version=7000000, networks=frozenset({"br0"}), slots=2, busy=0,
                     groups=frozenset())
    return dataclasses.replace(base, **changes)


def vm(name: str = "vm1", host_name: str | None = "src", **changes) -> InstanceRequest:
    base = InstanceRequest(uuid=f"uuid-{name}", name=name, host=host_name, vcpus=2, memory_mb=2048, disk_gb=10,
                           cpu_model="qemu64", networks=frozenset({"br0"}), group=None)
    return dataclasses.replace(base, **changes)


def fleet(*hosts: HostState, instances: tuple[InstanceRequest, ...] = ()) -> Snapshot:
    hosts = (host("src"),) + hosts if not any(h.name == "src" for h in hosts) else hosts
    instances = instances or (vm(),)
    return Snapshot(hosts={h.name: h for h in hosts}, instances={i.uuid: i for i in instances})


def refusal_of(selection, name: str) -> str:
    lines = [line for line in selection.explain() if line.startswith(f"{name}: ")]
    assert len(lines) == 1, selection.explain()
    return lines[0]


# -- filters: one refused host each, with the text an operator reads -------------------------------

@pytest.mark.parametrize("dest, expected", [
    (host("d", enabled=False, disabled_reason="broken fan"), "d: enabled: host is disabled (broken fan)"),
    (host("d", maintenance=True, maintenance_reason="drain 4"), "d: maintenance: host is in maintenance (drain 4)"),
    (host("d", zone="z2"), "d: zone: zone z2, the instance is in z1"),
    (host("d", vcpus_total=4.0, vcpus_used=3), "d: vcpus: needs 2 vCPUs, 1 free"),
    (host("d", memory_mb_total=4096.0, memory_mb_used=3072), "d: memory: needs 2048 MB, 1024 free"),
    (host("d", memory_mb_total=4096.0, memory_mb_used=5000), "d: memory: needs 2048 MB, 0 free"),
    (host("d", disk_gb_total=50.0, disk_gb_used=45), "d: disk: needs 10 GB, 5 free"),
    (host("d", cpu_model="Haswell"), "d: cpu-model: host CPU Haswell, the source's is Skylake"),
    (host("d", hypervisor_version=6000000),
     "d: hypervisor-version: hypervisor 6000000 is older than the source's 7000000"),
    (host("d", networks=frozenset({"br1"})), "d: networks: lacks br0"),
    (host("d", slots=2, busy=2), "d: slots: 2 of 2 migration slots busy"),
])
def test_each_filter_refuses_with_its_reason(dest, expected):
    selection = select(fleet(dest), "uuid-vm1")
    assert selection.chosen is None
    assert selection.ranked == ()
    assert refusal_of(selection, "d") == expected


def test_the_source_host_is_never_a_candidate():
    selection = select(fleet(host("d")), "uuid-vm1")
    assert selection.chosen == "d"
    assert selection.explain() == ["src: source-host: vm1 runs there"]


def test_a_host_that_fits_exactly_is_accepted():
    exact = host("d", vcpus_total=2.0, memory_mb_total=2048.0, disk_gb_total=10.0)
    assert select(fleet(exact), "uuid-vm1").chosen == "d"


def test_allocation_ratio_counts_in_the_total():
    # 4 physical vCPUs at ratio 4 (snapshot multiplies): 16 total, 15 used.
    assert "vcpus: needs 2 vCPUs, 1 free" in refusal_of(
        select(fleet(host("d", vcpus_total=16.0, vcpus_used=15)), "uuid-vm1"), "d")


def test_only_the_first_refusing_filter_is_reported():
    dest = host("d", enabled=False, memory_mb_total=0.0, zone="z9")
    assert refusal_of(select(fleet(dest), "uuid-vm1"), "d") == "d: enabled: host is disabled"


def test_cpu_model_filter_accepts_the_instances_named_model():
    snap = fleet(host("d", cpu_model="qemu64"))
    assert select(snap, "uuid-vm1").chosen == "d"
    # host-model/passthrough is no named model: the host CPU must be the source's.
    passthrough = fleet(host("d", cpu_model="(host-passthrough)"),
                        instances=(vm(cpu_model="(host-passthrough)"),))
    assert refusal_of(select(passthrough, "uuid-vm1"), "d").startswith("d: cpu-model:")


def test_unknown_source_cpu_leaves_the_question_to_the_precheck():
    snap = fleet(host("src", cpu_model=None), host("d", cpu_model="Haswell"))
    assert select(snap, "uuid-vm1").chosen == "d"


def test_a_newer_hypervisor_is_fine():
    assert select(fleet(host("d", hypervisor_version=8000000)), "uuid-vm1").chosen == "d"


def test_networks_filter_names_every_missing_one():
    snap = fleet(host("d", networks=frozenset({"br2"})), instances=(vm(networks=frozenset({"br1", "br0"})),))
    assert refusal_of(select(snap, "uuid-vm1"), "d") == "d: networks: lacks br0, br1"


def test_a_host_whose_networks_are_unknown_is_left_to_the_network_setup():
    assert select(fleet(host("d", networks=frozenset())), "uuid-vm1").chosen == "d"


def test_storage_filter_takes_a_local_disk_only_where_both_hosts_share_it():
    disk = Disk(target="vda", kind="file", source="/srv/shared/vm1.qcow2")
    snap = fleet(host("src", shared_paths=("/srv/shared",)), host("d1"), host("d2", shared_paths=("/srv/shared",)),
                 host("d3", shared_paths=("/srv/other",)),
                 instances=(vm(disks=(disk, Disk("vdb", "network", "iscsi://x:3260/iqn/1"))),))
    selection = select(snap, "uuid-vm1")
    assert selection.chosen == "d2"
    assert refusal_of(selection, "d1") == (
        "d1: storage: disk vda (/srv/shared/vm1.qcow2) is a local file not on storage shared by src and d1; "
        "copy its storage with --copy-storage full|incremental")
    assert refusal_of(selection, "d3").startswith("d3: storage: disk vda")


@pytest.mark.parametrize("copy", ["full", "incremental"])
def test_storage_filter_takes_a_local_disk_anywhere_when_its_storage_is_copied(copy):
    disk = Disk(target="vda", kind="file", source="/var/lib/libvirt/images/vm1.qcow2")
    snap = fleet(host("src"), host("d1"), instances=(vm(disks=(disk,)),))
    assert select(snap, "uuid-vm1").chosen is None
    assert select(snap, "uuid-vm1", copy_storage=copy).chosen == "d1"
    assert choose_with_slots(snap, "uuid-vm1", "spread", copy_storage=copy).chosen == "d1"


def test_storage_filter_never_copies_a_local_block_device():
    disk = Disk(target="vda", kind="block", source="/dev/vg0/vm1")
    snap = fleet(host("src"), host("d1"), instances=(vm(disks=(disk,)),))
    assert refusal_of(select(snap, "uuid-vm1", copy_storage="full"), "d1") == (
        "d1: storage: disk vda (/dev/vg0/vm1) is a local block device not on storage shared by src and d1; a block "
        "device is not copied (livemig cannot create its counterpart on d1)")


def test_ignore_slots_skips_the_slots_filter():
    snap = fleet(host("d", slots=1, busy=1))
    assert select(snap, "uuid-vm1").chosen is None
    assert select(snap, "uuid-vm1", ignore_slots=True).chosen == "d"


def test_anti_affinity_keeps_a_group_apart():
    snap = fleet(host("d1", groups=frozenset({"web"})), host("d2", groups=frozenset({"db"})),
                 instances=(vm(group="web"),))
    selection = select(snap, "uuid-vm1")
    assert selection.chosen == "d2"
    assert refusal_of(selection, "d1") == "d1: anti-affinity: an instance of group web is already there"
    # An instance without a group goes anywhere.
    assert select(fleet(host("d1", groups=frozenset({"web"}))), "uuid-vm1").chosen == "d1"


def test_candidates_and_exclude_limit_the_hosts_and_say_so():
    snap = fleet(host("a"), host("b"), host("c"))
    selection = select(snap, "uuid-vm1", candidates=["c", "b", "nope"], exclude=["b"])
    assert selection.chosen == "c"
    assert selection.explain() == ["b: excluded: left out by the request", "nope: unknown-host: not in the inventory"]


# -- weighers ---------------------------------------------------------------------------------------

def test_spread_picks_the_most_free_memory_fraction_then_vcpus():
    snap = fleet(host("a", memory_mb_used=8192), host("b", memory_mb_used=4096, vcpus_used=8),
                 host("c", memory_mb_used=4096, vcpus_used=4))
    assert select(snap, "uuid-vm1").ranked == ("c", "b", "a")


def test_spread_is_a_fraction_of_each_hosts_own_memory():
    big = host("big", memory_mb_total=65536.0, memory_mb_used=32768)  # 32 GiB free, half
    small = host("small", memory_mb_total=16384.0, memory_mb_used=4096)  # 12 GiB free, three quarters
    assert select(fleet(big, small), "uuid-vm1").chosen == "small"


def test_pack_picks_the_least_room_that_still_fits():
    snap = fleet(host("a", memory_mb_used=8192), host("b", memory_mb_used=14336), host("c", memory_mb_used=15000))
    selection = select(snap, "uuid-vm1", weigher="pack")
    assert selection.ranked == ("b", "a")  # c cannot take 2048 MB
    assert refusal_of(selection, "c") == "c: memory: needs 2048 MB, 1384 free"


def test_ties_break_by_name_whatever_the_order_given():
    names = ["h3", "h1", "h2", "h0"]
    for weigher in ("spread", "pack"):
        for order in (names, list(reversed(names))):
            snap = fleet(*(host(n) for n in order))
            assert select(snap, "uuid-vm1", weigher=weigher).ranked == ("h0", "h1", "h2", "h3")


def test_an_unknown_weigher_is_bad_input():
    with pytest.raises(InvalidInput, match="unknown weigher 'fast'.*pack, spread"):
        select(fleet(host("d")), "uuid-vm1", weigher="fast")


# -- place and plan ---------------------------------------------------------------------------------

def test_place_counts_on_the_destination_and_keeps_the_source():
    snap = fleet(host("d"), instances=(vm(group="web"),))
    after = snap.place(snap.instances["uuid-vm1"], "d")
    assert (after.hosts["d"].vcpus_used, after.hosts["d"].memory_mb_used, after.hosts["d"].disk_gb_used) == (2, 2048, 10)
    assert after.hosts["d"].groups == {"web"} and after.hosts["d"].busy == 1
    assert after.hosts["src"].busy == 1 and after.hosts["src"].memory_mb_used == 0  # unchanged use
    assert snap.hosts["d"].memory_mb_used == 0  # the original is untouched


def test_plan_goes_largest_first_and_counts_what_it_placed():
    instances = (vm("small", memory_mb=1024), vm("huge", memory_mb=6144), vm("mid", memory_mb=3072),
                 vm("mid-more-cpu", memory_mb=3072, vcpus=4))
    snap = fleet(host("a", memory_mb_total=8192.0), host("b", memory_mb_total=8192.0), instances=instances)
    placements = plan(snap, [i.uuid for i in instances])
    assert [p.instance_name for p in placements] == ["huge", "mid-more-cpu", "mid", "small"]
    # huge -> a (tie by name); mid-more-cpu -> b (more free); mid -> b (5120 free vs 2048); small -> a
    # (2048 of 8192 free on a vs 2048 on b: tie, then vCPUs: a 14 free, b 10).
    assert [p.dest for p in placements] == ["a", "b", "b", "a"]
    assert all(p.source == "src" and p.reason is None for p in placements)


def test_plan_reports_what_did_not_fit_with_every_hosts_reason():
    instances = (vm("one", memory_mb=6000), vm("two", memory_mb=6000))
    snap = fleet(host("a", memory_mb_total=8192.0), instances=instances)
    placements = plan(snap, ["uuid-two", "uuid-one", "uuid-gone"])
    assert [(p.instance_name, p.dest) for p in placements] == [("one", "a"), ("two", None), ("uuid-gone", None)]
    assert placements[1].reason == ("no host can take it: a: memory: needs 6000 MB, 2192 free; "
                                    "src: source-host: two runs there")
    assert placements[2].reason == "not in the inventory"


def test_plan_ignores_slots_by_default_and_keeps_anti_affinity_within_the_plan():
    instances = (vm("w1", group="web"), vm("w2", group="web"), vm("w3", group="web"))
    snap = fleet(host("a", slots=1, busy=1), host("b", slots=1, busy=1), instances=instances)
    placements = plan(snap, [i.uuid for i in instances])
    assert sorted(p.dest for p in placements[:2]) == ["a", "b"]
    assert placements[2].dest is None
    assert "a: anti-affinity" in placements[2].reason and "b: anti-affinity" in placements[2].reason


def test_plan_is_deterministic():
    rng = random.Random(7)
    snap = _random_fleet(rng, 12, 40)
    first = plan(snap, list(snap.instances))
    shuffled = list(snap.instances)
    rng.shuffle(shuffled)
    reordered = Snapshot(hosts=dict(reversed(list(snap.hosts.items()))), instances=snap.instances)
    assert plan(reordered, shuffled) == first


def _random_fleet(rng: random.Random, n_hosts: int, n_instances: int) -> Snapshot:
    hosts = [host(f"h{i:02d}", vcpus_total=float(rng.choice([8, 16, 32])),
                  memory_mb_total=float(rng.choice([4096, 8192, 16384])), disk_gb_total=float(rng.choice([20, 100])),
                  vcpus_used=rng.randint(0, 8), memory_mb_used=rng.randint(0, 4096), disk_gb_used=rng.randint(0, 20),
                  zone=rng.choice(["z1", "z1", "z2"]), groups=frozenset(rng.sample(["g1", "g2", "g3"], rng.randint(0, 1))))
             for i in range(n_hosts)]
    source = host("src", vcpus_total=1000.0, memory_mb_total=1e6, disk_gb_total=1e4)
    instances = [vm(f"vm{i:03d}", vcpus=rng.randint(1, 8), memory_mb=rng.choice([512, 1024, 2048, 4096]),
                    disk_gb=rng.randint(1, 20), group=rng.choice([None, None, "g1", "g2", "g3"]))
                 for i in range(n_instances)]
    return Snapshot(hosts={h.name: h for h in [source, *hosts]}, instances={i.uuid: i for i in instances})


@pytest.mark.parametrize("seed", range(40))
def test_a_plan_never_overfills_a_host_nor_breaks_a_group(seed):
    """Property, over generated fleets: whatever the plan places fits within
    each host's free room, in its zone, and never two of a group on one host."""
    rng = random.Random(seed)
    snap = _random_fleet(rng, rng.randint(1, 8), rng.randint(1, 40))
    placements = plan(snap, list(snap.instances), weigher=rng.choice(["spread", "pack"]))
    assert sorted(p.instance_uuid for p in placements) == sorted(snap.instances)
    added: dict[str, list[InstanceRequest]] = {}
    for p in placements:
        assert p.dest != "src"
        if p.dest is not None:
            added.setdefault(p.dest, []).append(snap.instances[p.instance_uuid])
        else:
            assert p.reason.startswith("no host can take it: ")
    for name, placed in added.items():
        h = snap.hosts[name]
        assert h.vcpus_used + sum(i.vcpus for i in placed) <= h.vcpus_total
        assert h.memory_mb_used + sum(i.memory_mb for i in placed) <= h.memory_mb_total
        assert h.disk_gb_used + sum(i.disk_gb for i in placed) <= h.disk_gb_total
        assert h.zone == "z1"
        groups = [i.group for i in placed if i.group] + list(h.groups)
        assert len(groups) == len(set(groups))


# -- the snapshot read from the inventory ------------------------------------------------------------

def test_sync_records_networks_and_groups_and_the_snapshot_counts_incoming(cloud, settings):
    cloud.driver.update_host(cloud.uri("c"), bridges=["br-guests", "br-storage"], networks=["default"])
    web = cloud.driver.create_domain(cloud.uri("b"), "web1", vcpus=2, memory_mb=1024, disk_gb=3, group="web",
                                     interfaces=[InterfaceInfo(mac="52:54:00:aa:00:09", network="default")])
    livemig.sync_hosts(livemig.admin_context("tests"), settings=settings)
    db = database_for(settings.database_url)
    with db.session() as s:
        assert s.get(Host, "c").networks == ["br-guests", "br-storage", "default"]
        assert s.get(Instance, web).group == "web"
        # An unfinished migration of vm1 (on a) to c: counted on c, busy on a and c.
        s.add(Migration(instance_uuid=cloud.vm, instance_name="vm1", source_host="a", dest_host="c",
                        status=MigrationStatus.RUNNING.value))
        s.add(Migration(instance_uuid=web, instance_name="web1", source_host="b", dest_host="a",
                        status=MigrationStatus.COMPLETED.value))
    with db.reading() as s:
        snap = read_snapshot(s)
        mid = s.query(Migration.id).filter(Migration.status == "running").scalar()
        without = read_snapshot(s, exclude_migration=mid)
    assert snap.instances[web] == InstanceRequest(uuid=web, name="web1", host="b", vcpus=2, memory_mb=1024,
                                                  disk_gb=3, cpu_model="qemu64", networks=frozenset({"default"}),
                                                  group="web")
    assert snap.instances[cloud.vm].networks == {"br-guests"}
    a, b, c = snap.hosts["a"], snap.hosts["b"], snap.hosts["c"]
    assert (a.vcpus_used, a.memory_mb_used, a.disk_gb_used, a.busy) == (1, 256, 1, 1)
    assert (b.vcpus_used, b.memory_mb_used, b.groups, b.busy) == (2, 1024, {"web"}, 0)
    assert (c.vcpus_used, c.memory_mb_used, c.disk_gb_used, c.busy) == (1, 256, 1, 1)
    assert c.memory_mb_total == 32768 * 1.0 and c.vcpus_total == 16 * 4.0
    assert c.networks == {"br-guests", "br-storage", "default"} and c.cpu_model == "Skylake-Server"
    assert (without.hosts["c"].memory_mb_used, without.hosts["c"].busy, without.hosts["a"].busy) == (0, 0, 0)
    # web1 needs the libvirt network "default": only c has it.
    selection = select(without, web)
    assert selection.chosen == "c"
    assert selection.explain() == ["a: networks: lacks default", "b: source-host: web1 runs there"]

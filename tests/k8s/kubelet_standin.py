#!/usr/bin/env python3
"""A kubelet stand-in for vgpud-k8s, on Python grpcio (not the Rust gRPC stack the agent uses).

It replays what the kubelet does with a device plugin and with a DRA plugin, and checks each
rule the kubelet relies on. Every rule is cited to the kubelet's source (Kubernetes 1.34+,
k8s.io/kubernetes), as `file: function`:

  DP = pkg/kubelet/cm/devicemanager
  - serve before register: DP/plugin/v1beta1/server.go: (*server).Register calls connectClient
    before it answers; DP/plugin/v1beta1/client.go: Connect dials the endpoint WithBlock, then
    PluginConnected asks GetDevicePluginOptions.
  - v1beta1 and a valid resource name: server.go: Register: isVersionCompatibleWithPlugin,
    v1helper.IsExtendedResourceName (pkg/apis/core/v1/helper/helpers.go).
  - options match the RPCs: DP/manager.go: callGetPreferredAllocationIfAvailable asks only when
    GetPreferredAllocationAvailable, callPreStartContainerIfNeeded only when PreStartRequired.
  - ListAndWatch: client.go: Run streams, each message the whole list
    (PluginListAndWatchReceiver -> manager.go genericDeviceUpdateCallback).
  - Allocate: manager.go: allocateContainerResources sends one ContainerAllocateRequest with the
    devices and uses ContainerResponses[0]; an error fails the pod's admission.
  - preferred allocation: manager.go: devicesToAllocate passes available, must-include and size,
    and takes the preferred devices only from what is available.
  - a restarting kubelet: manager.go: Start -> server.Start -> CleanupPluginDirectory removes
    every socket in device-plugins/; plugins register again.

  DRA = pkg/kubelet/cm/dra
  - registration: pkg/kubelet/pluginmanager/operationexecutor/operation_generator.go:
    GenerateRegisterPluginFunc calls GetInfo, has the handler validate it
    (DRA/plugin/registration.go: ValidatePlugin: a supported service such as "v1.DRAPlugin"),
    then NotifyRegistrationStatus.
  - prepare/unprepare: DRA/manager.go: prepareResources / unprepareResources: every claim of the
    request must come back in the response map; a claim's own error fails only that claim (and
    is retried); unprepare is retried until it succeeds.

Usage: kubelet_standin.py device-plugin ARGS | dra ARGS (see --help). Exit 0 when every check
passed; prints "STANDIN PASS <n> checks".
"""

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures

import grpc
from grpc_tools import protoc

CHECKS = 0


def check(cond, what):
    global CHECKS
    CHECKS += 1
    if not cond:
        print(f"STANDIN FAIL: {what}", flush=True)
        sys.exit(1)
    print(f"ok: {what}", flush=True)


def compile_protos(proto_dir):
    out = tempfile.mkdtemp(prefix="standin-proto-")
    files = [f for f in os.listdir(proto_dir) if f.endswith(".proto")]
    rc = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}", *files])
    if rc != 0:
        sys.exit(f"protoc failed on {proto_dir}")
    sys.path.insert(0, out)


def channel(path):
    """A channel to a plugin's socket, as the kubelet dials it: client.go: dial uses
    grpc.WithAuthority("localhost") (an HTTP/2 server refuses the socket path as :authority)."""
    return grpc.insecure_channel("unix://" + path, options=[("grpc.default_authority", "localhost")])


def vgpud_request(run_dir, req):
    """One request on vgpud's control socket (docs/control.md)."""
    s = socket.socket(socket.AF_UNIX)
    s.connect(os.path.join(run_dir, "control.sock"))
    s.sendall((json.dumps(req) + "\n").encode())
    buf = b""
    while not buf.endswith(b"\n"):
        b = s.recv(65536)
        if not b:
            break
        buf += b
    s.close()
    return json.loads(buf)


def wait_until(pred, timeout, step=0.05):
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return pred()


# --- the device plugin side ---------------------------------------------------------------

def is_extended_resource_name(name):
    """v1helper.IsExtendedResourceName: not kubernetes.io-native, no requests. prefix, and a
    qualified name whose domain part is present (a domain-prefixed name)."""
    if "/" not in name or name.startswith("requests."):
        return False
    domain, _, part = name.partition("/")
    if domain == "kubernetes.io" or domain.endswith(".kubernetes.io"):
        return False
    dns1123 = re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*", domain)
    qname = re.fullmatch(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?", part)
    return bool(dns1123) and len(domain) <= 253 and bool(qname) and len(part) <= 63


class Kubelet:
    """The kubelet's device manager: Registration on kubelet.sock, a client per plugin."""

    def __init__(self, dp_dir):
        import deviceplugin_pb2 as pb
        import deviceplugin_pb2_grpc as pbg
        self.pb, self.pbg = pb, pbg
        self.dir = dp_dir
        self.lock = threading.Lock()
        self.plugins = {}  # resource -> {"endpoint", "options", "stub", "lists": [...], "registered_at"}
        self.errors = []
        self.server = None

    def start(self):
        os.makedirs(self.dir, exist_ok=True)
        kubelet = self

        class Registration(self.pbg.RegistrationServicer):
            def Register(self, req, ctx):
                return kubelet.register(req, ctx)

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self.pbg.add_RegistrationServicer_to_server(Registration(), self.server)
        self.server.add_insecure_port("unix://" + os.path.join(self.dir, "kubelet.sock"))
        self.server.start()

    def stop(self):
        self.server.stop(0).wait()

    def register(self, req, ctx):
        pb = self.pb
        if req.version != "v1beta1":
            self.errors.append(f"Register version {req.version!r}")
            ctx.abort(grpc.StatusCode.UNKNOWN, "unsupported version")
        if not is_extended_resource_name(req.resource_name):
            self.errors.append(f"Register resource name {req.resource_name!r}")
            ctx.abort(grpc.StatusCode.UNKNOWN, "invalid resource name")
        endpoint = os.path.join(self.dir, req.endpoint)
        # The kubelet dials before it answers Register: the plugin must already serve.
        try:
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(2)
            s.connect(endpoint)
            s.close()
        except OSError as e:
            self.errors.append(f"{req.resource_name}: endpoint {endpoint} not served at Register: {e}")
            ctx.abort(grpc.StatusCode.UNKNOWN, "cannot dial the plugin")
        ch = channel(endpoint)
        grpc.channel_ready_future(ch).result(timeout=10)
        stub = self.pbg.DevicePluginStub(ch)
        opts = stub.GetDevicePluginOptions(pb.Empty(), timeout=5)
        entry = {
            "endpoint": endpoint, "reg_options": req.options, "options": opts, "stub": stub,
            "lists": [], "registered_at": time.monotonic(), "channel": ch,
        }
        with self.lock:
            old = self.plugins.get(req.resource_name)
            entry["registrations"] = (old["registrations"] + 1) if old else 1
            self.plugins[req.resource_name] = entry
        threading.Thread(target=self.watch, args=(req.resource_name, entry), daemon=True).start()
        return pb.Empty()

    def watch(self, resource, entry):
        try:
            for resp in entry["stub"].ListAndWatch(self.pb.Empty()):
                with self.lock:
                    entry["lists"].append((time.monotonic(), {d.ID: d for d in resp.devices}))
        except grpc.RpcError:
            pass

    def plugin(self, resource):
        with self.lock:
            return self.plugins.get(resource)

    def latest(self, resource):
        p = self.plugin(resource)
        with self.lock:
            return p["lists"][-1][1] if p and p["lists"] else None


def device_plugin(args):
    compile_protos(args.proto_dir)
    layout = json.loads(args.layout_json)  # [{uuid, type, parent, numa}]
    resources = sorted({"vgpud.io/" + v["type"] for v in layout})
    dp_dir = os.path.join(args.kubelet_dir, "device-plugins")
    k = Kubelet(dp_dir)
    k.start()
    agent = subprocess.Popen(args.agent, stderr=open(args.agent_log, "ab"))
    try:
        run_device_plugin_checks(args, k, layout, resources, dp_dir)
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(10)
        except subprocess.TimeoutExpired:
            agent.kill()
        k.stop()
    check(agent.returncode == 0, f"the agent stops cleanly on SIGTERM (exit {agent.returncode})")
    check(not any(f.startswith("vgpud-") for f in os.listdir(dp_dir)), "its sockets are removed at exit")


def run_device_plugin_checks(args, k, layout, resources, dp_dir):
    pb = k.pb
    ok = wait_until(lambda: all(k.plugin(r) for r in resources), 15)
    check(ok, f"every resource registers: {resources}")
    check(not k.errors, f"registrations were valid (v1beta1, extended resource names, endpoint served before Register): {k.errors}")
    for r in resources:
        p = k.plugin(r)
        check(p["reg_options"] == p["options"], f"{r}: registration options equal GetDevicePluginOptions")
        check(p["options"].get_preferred_allocation_available and not p["options"].pre_start_required,
              f"{r}: options: preferred allocation offered, no PreStartContainer required")
        # The options must match the RPCs: both answer.
        p["stub"].PreStartContainer(pb.PreStartContainerRequest(devices_ids=[]), timeout=5)
    by_res = {r: [v for v in layout if "vgpud.io/" + v["type"] == r] for r in resources}
    for r in resources:
        first = wait_until(lambda: k.latest(r), 5)
        want = {v["uuid"] for v in by_res[r]}
        check(first is not None and set(first) == want, f"{r}: the first ListAndWatch lists its vGPUs {sorted(want)}")
        check(all(d.health == "Healthy" for d in first.values()), f"{r}: every device Healthy at first")
        for v in by_res[r]:
            numa = [n.ID for n in first[v["uuid"]].topology.nodes]
            check(numa == [v["numa"]], f"{r}: {v['uuid'][:8]} topology is its parent's NUMA node {v['numa']}")
        check(all(len(i) <= 63 for i in first), "device IDs fit 63 characters")

    # Allocate.
    r = next(r for r in resources if len(by_res[r]) >= 2)
    stub = k.plugin(r)["stub"]
    ids = [v["uuid"] for v in by_res[r]]
    ids = [ids[1], ids[0]] + ids[2:]
    resp = stub.Allocate(pb.AllocateRequest(container_requests=[pb.ContainerAllocateRequest(devices_ids=ids)]), timeout=5)
    check(len(resp.container_responses) == 1, "Allocate answers each container request")
    c = resp.container_responses[0]
    env = "MDEV_PCI_RESOURCE_" + r.upper().replace("/", "_").replace(".", "_")
    check(c.envs.get(env) == ",".join(ids), f"Allocate of {len(ids)} gives {env} with the {len(ids)} UUIDs in order")
    if args.cdi:
        check([d.name for d in c.cdi_devices] == ["vgpud.io/vgpu=" + i for i in ids], "CDI device names, in order")
    else:
        check([m.container_path for m in c.mounts] == [f"/var/run/vgpud/{i}" for i in ids], "one socket directory mount per vGPU, in order")
        for m, i in zip(c.mounts, ids):
            check(os.path.exists(os.path.join(m.host_path, "vfio-user.sock")), f"{i[:8]}: the mounted directory holds its socket")
            check(os.path.samefile(os.path.join(m.host_path, "vfio-user.sock"), os.path.join(args.run_dir, i + ".sock")),
                  f"{i[:8]}: ... the very socket vgpud serves the vGPU on")
        check(not any(m.host_path == args.run_dir for m in c.mounts), "vgpud's run directory (control socket) is never mounted")
    try:
        stub.Allocate(pb.AllocateRequest(container_requests=[pb.ContainerAllocateRequest(devices_ids=[ids[0], "00000000-0000-4000-8000-000000000000"])]), timeout=5)
        check(False, "Allocate of an unknown ID fails")
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.INVALID_ARGUMENT, f"Allocate of an unknown ID fails ({e.code()})")

    # Preferred allocation.
    for size in range(0, len(ids) + 1):
        for must in ([], ids[-1:]):
            if len(must) > size:
                continue
            avail = ids
            resp = stub.GetPreferredAllocation(pb.PreferredAllocationRequest(container_requests=[
                pb.ContainerPreferredAllocationRequest(available_deviceIDs=avail, must_include_deviceIDs=must, allocation_size=size)]), timeout=5)
            got = list(resp.container_responses[0].deviceIDs)
            check(len(got) == size and set(got) <= set(avail) and set(must) <= set(got) and len(set(got)) == len(got),
                  f"preferred allocation of {size} (must {len(must)}): within the available, with the must-include, no repeats")
    # The policy: pack fills one parent.
    parents = {v["uuid"]: v["parent"] for v in layout}
    resp = stub.GetPreferredAllocation(pb.PreferredAllocationRequest(container_requests=[
        pb.ContainerPreferredAllocationRequest(available_deviceIDs=ids, must_include_deviceIDs=[], allocation_size=2)]), timeout=5)
    got = list(resp.container_responses[0].deviceIDs)
    same = len({parents[i] for i in got}) == 1
    check(same == (args.policy == "pack"), f"policy {args.policy}: 2 devices on {len({parents[i] for i in got})} parent(s)")

    health_and_restart(args, k, layout, resources, dp_dir)


def workers(vgpud_pid):
    """vgpud's CUDA workers, oldest first (one per vGPU, started as each vGPU is created)."""
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            stat = open(f"/proc/{p}/stat").read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            cmd = open(f"/proc/{p}/cmdline", "rb").read()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == vgpud_pid and b"vgpud-cuda-worker" in cmd:
            out.append(int(p))
    return sorted(out)


def health_and_restart(args, k, layout, resources, dp_dir):
    # The worker of one vGPU dies while a VMM holds it: that ID alone goes Unhealthy within 2 s.
    victim = layout[0]
    r = "vgpud.io/" + victim["type"]
    pids = workers(args.vgpud_pid)
    check(len(pids) == len(layout), f"one CUDA worker per layout vGPU ({len(pids)})")
    vmm = socket.socket(socket.AF_UNIX)
    vmm.connect(os.path.join(args.run_dir, victim["uuid"] + ".sock"))
    time.sleep(0.2)
    t0 = time.monotonic()
    os.kill(pids[0], signal.SIGKILL)

    def state():
        return {res: {i: d.health for i, d in (k.latest(res) or {}).items()} for res in resources}

    seen = wait_until(lambda: state()[r].get(victim["uuid"]) == "Unhealthy", 2.0, 0.02)
    dt = time.monotonic() - t0
    check(seen, f"killed worker: {victim['uuid'][:8]} Unhealthy within 2 s ({dt:.2f} s)")
    others = [(res, i, h) for res, devs in state().items() for i, h in devs.items() if i != victim["uuid"]]
    check(all(h == "Healthy" for _, _, h in others), f"... and only that ID: {others}")
    # The VMM leaves; its reset starts a new worker: Healthy again.
    vmm.close()
    back = wait_until(lambda: state()[r].get(victim["uuid"]) == "Healthy", 5.0, 0.02)
    check(back, f"healthy again after recovery ({time.monotonic() - t0:.2f} s after the kill)")
    check(len(workers(args.vgpud_pid)) == len(layout), "a new worker replaced the dead one")

    # A restarting kubelet: its registration server goes, every socket in device-plugins/ is
    # removed, a new kubelet.sock appears. The plugin must register again within 5 s.
    before = {res: set(k.latest(res)) for res in resources}
    regs = {res: k.plugin(res)["registrations"] for res in resources}
    k.stop()
    for f in os.listdir(dp_dir):
        os.unlink(os.path.join(dp_dir, f))
    t0 = time.monotonic()
    k.start()
    again = wait_until(lambda: all((k.plugin(res) or {}).get("registrations", 0) > regs[res] for res in resources), 5.0, 0.02)
    check(again, f"registered again within 5 s of the new kubelet.sock ({time.monotonic() - t0:.2f} s)")
    for res in resources:
        lst = wait_until(lambda: k.latest(res) if k.plugin(res)["lists"] else None, 5)
        check(lst is not None and set(lst) == before[res] and all(d.health == "Healthy" for d in lst.values()),
              f"{res}: the same IDs, healthy, after re-registration")
    check(not k.errors, f"re-registrations were valid: {k.errors}")


# --- the DRA side -----------------------------------------------------------------------------

def dra(args):
    compile_protos(args.proto_dir)
    import dra_pb2 as pb
    import dra_pb2_grpc as pbg
    import pluginregistration_pb2 as rpb
    import pluginregistration_pb2_grpc as rpbg

    reg_sock = os.path.join(args.kubelet_dir, "plugins_registry", "vgpud.io-reg.sock")
    log = open(args.agent_log, "ab")
    agent = subprocess.Popen(args.agent, stderr=log)
    try:
        check(wait_until(lambda: os.path.exists(reg_sock), 10), "the plugin's registration socket appears in plugins_registry/")
        ch = channel(reg_sock)
        reg = rpbg.RegistrationStub(ch)
        info = reg.GetInfo(rpb.InfoRequest(), timeout=5)
        check(info.type == "DRAPlugin" and info.name == "vgpud.io", f"GetInfo: type {info.type}, name {info.name}")
        check("v1.DRAPlugin" in info.supported_versions, f"GetInfo: services {list(info.supported_versions)} include v1.DRAPlugin")
        check(os.path.isabs(info.endpoint) and os.path.exists(info.endpoint), f"GetInfo: endpoint {info.endpoint} served")
        reg.NotifyRegistrationStatus(rpb.RegistrationStatus(plugin_registered=True), timeout=5)
        stub = pbg.DRAPluginStub(channel(info.endpoint))

        # What the scheduler would allocate: two devices of the node's pool, from the slices.
        slices = json.loads(subprocess.check_output(args.slices_cmd))
        devices = next(s for s in slices["items"] if s["spec"].get("devices"))["spec"]["devices"]
        picks = [next(d for d in devices if d["attributes"]["type"]["string"] == t) for t in args.types]
        claims = []
        for n, d in enumerate(picks):
            name, uid = f"claim-{n}", f"0000000{n}-1111-4222-8333-444444444444"
            claims.append(pb.Claim(namespace="default", name=name, uid=uid))
            write_claim(args.claims_dir, "default", name, uid, [("gpu", d["name"])], args.node)

        def prepare(cs):
            return stub.NodePrepareResources(pb.NodePrepareResourcesRequest(claims=cs), timeout=30)

        first = prepare(claims)
        check(set(first.claims) == {c.uid for c in claims}, "prepare answers every claim")
        result = {}
        for c, d in zip(claims, picks):
            r = first.claims[c.uid]
            check(r.error == "" and len(r.devices) == 1, f"{c.name}: prepared one device ({r.error!r})")
            dev = r.devices[0]
            check(dev.pool_name == args.node and dev.device_name == d["name"] and list(dev.request_names) == ["gpu"],
                  f"{c.name}: device {dev.device_name} of pool {dev.pool_name}")
            check(len(dev.cdi_device_ids) == 1 and dev.cdi_device_ids[0].startswith("vgpud.io/vgpu="), f"{c.name}: CDI ID {list(dev.cdi_device_ids)}")
            result[c.uid] = (dev.device_name, list(dev.cdi_device_ids))
        uuids = [cdi[0].split("=", 1)[1] for _, cdi in result.values()]
        check(len(set(uuids)) == 2, "two claims, two CDI IDs")
        status = {s["uuid"]: s for s in vgpud_request(args.run_dir, {"op": "status"})["result"]}
        for c, d, u in zip(claims, picks, uuids):
            check(u in status and status[u]["type"] == d["attributes"]["type"]["string"] and status[u]["parent"] == d["attributes"]["parent"]["string"],
                  f"{c.name}: vgpud has vGPU {u[:8]} of type {d['attributes']['type']['string']} on {d['attributes']['parent']['string']}")
        spec = json.load(open(os.path.join(args.cdi_dir, "vgpud.io-dra.json")))
        check(sorted(x["name"] for x in spec["devices"]) == sorted(uuids), "the CDI spec lists both vGPUs")

        def same(resp):
            return {uid: (r.devices[0].device_name, list(r.devices[0].cdi_device_ids)) for uid, r in resp.claims.items() if r.devices} == result

        check(same(prepare(claims)), "prepare again: the same devices and CDI IDs")
        check(len(vgpud_request(args.run_dir, {"op": "list"})["result"]) == 2, "... and no new vGPU")

        # The agent restarts: the checkpoint keeps the claims.
        agent.send_signal(signal.SIGTERM)
        check(agent.wait(10) == 0, "the agent stops on SIGTERM")
        agent = subprocess.Popen(args.agent, stderr=log)
        check(wait_until(lambda: os.path.exists(info.endpoint), 10), "the restarted agent serves again")
        stub = pbg.DRAPluginStub(channel(info.endpoint))
        check(same(prepare(claims)), "after an agent restart, prepare gives the same result (checkpoint)")
        check(len(vgpud_request(args.run_dir, {"op": "list"})["result"]) == 2, "... with the same two vGPUs")

        # Unknown claims: each gets its own error; the known one is still answered.
        unknown = pb.Claim(namespace="default", name="nobody", uid="99999999-1111-4222-8333-444444444444")
        wrong_uid = pb.Claim(namespace="default", name="claim-0", uid="88888888-1111-4222-8333-444444444444")
        mixed = prepare([claims[0], unknown, wrong_uid])
        check(set(mixed.claims) == {claims[0].uid, unknown.uid, wrong_uid.uid}, "a mixed request answers every claim")
        check(mixed.claims[unknown.uid].error != "" and not mixed.claims[unknown.uid].devices, f"unknown claim: error {mixed.claims[unknown.uid].error!r}")
        check(mixed.claims[wrong_uid.uid].error != "", f"a claim whose UID differs: error {mixed.claims[wrong_uid.uid].error!r}")
        check(mixed.claims[claims[0].uid].error == "", "... and the known claim in the same request is prepared")

        # Unprepare destroys the vGPUs.
        un = stub.NodeUnprepareResources(pb.NodeUnprepareResourcesRequest(claims=claims), timeout=30)
        check(set(un.claims) == {c.uid for c in claims} and all(r.error == "" for r in un.claims.values()), "unprepare answers every claim, no error")
        left = {s["uuid"] for s in vgpud_request(args.run_dir, {"op": "list"})["result"]}
        check(not (left & set(uuids)), "unprepare removed the vGPUs from vgpud")
        check(not os.path.exists(os.path.join(args.cdi_dir, "vgpud.io-dra.json")), "the CDI spec is gone with its last device")
        for u in uuids:
            check(not os.path.exists(os.path.join(args.run_dir, "k8s", u)), f"{u[:8]}: its socket directory is gone")
        un = stub.NodeUnprepareResources(pb.NodeUnprepareResourcesRequest(claims=claims + [unknown]), timeout=30)
        check(all(r.error == "" for r in un.claims.values()), "unprepare again (a kubelet retry), and of a claim never prepared: success")
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(10)
        except subprocess.TimeoutExpired:
            agent.kill()


def write_claim(claims_dir, ns, name, uid, results, pool):
    """A ResourceClaim as the API server serves it once the scheduler allocated it."""
    os.makedirs(os.path.join(claims_dir, ns), exist_ok=True)
    claim = {
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": ns, "uid": uid},
        "spec": {"devices": {"requests": [{"name": req, "exactly": {"deviceClassName": "vgpu.vgpud.io"}} for req, _ in results]}},
        "status": {"allocation": {"devices": {"results": [
            {"request": req, "driver": "vgpud.io", "pool": pool, "device": dev} for req, dev in results]}}},
    }
    with open(os.path.join(claims_dir, ns, name + ".json"), "w") as f:
        json.dump(claim, f)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", choices=["device-plugin", "dra"])
    p.add_argument("--proto-dir", required=True)
    p.add_argument("--kubelet-dir", required=True)
    p.add_argument("--run-dir", required=True, help="vgpud's run directory")
    p.add_argument("--vgpud-pid", type=int)
    p.add_argument("--layout-json", help="the layout's vGPUs: [{uuid, type, parent, numa}]")
    p.add_argument("--policy", default="pack")
    p.add_argument("--cdi", action="store_true")
    p.add_argument("--cdi-dir")
    p.add_argument("--claims-dir")
    p.add_argument("--node")
    p.add_argument("--types", nargs="*", default=[])
    p.add_argument("--slices-cmd", type=json.loads, help="the command printing the ResourceSlices, as a JSON array")
    p.add_argument("--agent-log", required=True)
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args = p.parse_args(argv[:cut])
    args.agent = argv[cut + 1:]  # after --: the agent's command line
    if args.scenario == "device-plugin":
        device_plugin(args)
    else:
        dra(args)
    print(f"STANDIN PASS {CHECKS} checks", flush=True)


if __name__ == "__main__":
    main()

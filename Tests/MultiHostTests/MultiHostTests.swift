import Foundation
import NN
import TestSupport
import XCTest

/// Real multi-host runs: every host is a network namespace with its own network stack (veth pairs on a
/// bridge, scripts/netns-cluster.sh), every host runs its own launcher, and ranks talk over the bridge.
/// Needs root and iproute2; without them each test is skipped with the reason.
final class MultiHostTests: XCTestCase {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path
    static let build = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path
    static let data = ProcessInfo.processInfo.environment["SWIFT_DDP_DATA"] ?? root + "/data"
    /// Names and subnet of this run's hosts: unlikely to meet another run's or a user's cluster.
    let prefix = "dt\(getpid() % 100000)"
    let subnet = "10.78.\(getpid() % 200 + 20)"
    let secret = "5ec7e75ec7e75ec7e75ec7e75ec7e7aa"

    func address(_ host: Int) -> String { "\(subnet).\(10 + host)" }
    func namespace(_ host: Int) -> String { "\(prefix)-h\(host)" }

    @discardableResult
    func sh(_ arguments: [String], environment: [String: String] = [:]) throws -> (status: Int32, output: String, pid: Int32) {
        try runToEnd("/usr/bin/env", arguments, environment: environment)
    }

    /// Brings up `hosts` test hosts (removed when the test ends), or skips the test saying why it cannot.
    func cluster(_ hosts: Int, rate: String? = nil) throws {
        guard getuid() == 0 else { throw XCTSkip("multi-host tests need root for network namespaces (ip netns)") }
        guard (try? sh(["ip", "-V"]))?.status == 0 else { throw XCTSkip("multi-host tests need iproute2 ('ip'); scripts/setup.sh installs it as root") }
        let env = ["NETNS_PREFIX": prefix, "NETNS_SUBNET": subnet]
        addTeardownBlock { [self] in _ = try? sh(["bash", Self.root + "/scripts/netns-cluster.sh", "down"], environment: env) }
        let up = try sh(["bash", Self.root + "/scripts/netns-cluster.sh", "up", String(hosts)] + (rate.map { ["--rate", $0] } ?? []), environment: env)
        if up.status != 0 {
            if up.output.contains("Operation not permitted") || up.output.contains("needs root") {
                throw XCTSkip("cannot create network namespaces here: \(up.output)")
            }
            XCTFail("netns-cluster up failed:\n\(up.output)")
            throw XCTSkip("no cluster")
        }
    }

    /// One host's launcher, its output going to a file read after it ends.
    final class Launcher {
        let process = Process()
        let logPath: String
        init(_ test: MultiHostTests, host: Int, nodes: Int, perNode: Int, port: Int, secret: String, timeout: Int = 20,
             command: [String]) throws {
            logPath = scratchFile("\(test.prefix)-launcher\(host)-\(port).log")
            _ = FileManager.default.createFile(atPath: logPath, contents: nil)
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = ["ip", "netns", "exec", test.namespace(host), MultiHostTests.build + "/ddp-launch",
                                 "--nnodes", String(nodes), "--node-rank", String(host), "--nproc-per-node", String(perNode),
                                 "--master-addr", test.address(0), "--master-port", String(port), "--secret", secret,
                                 "--timeout", String(timeout), "--numa-bind", "none", "--"] + command
            let log = FileHandle(forWritingAtPath: logPath)!
            process.standardOutput = log
            process.standardError = log
            try process.run()
        }
        var output: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }
        /// Waits for the launcher (at most `seconds`), returning its exit status and the seconds it took.
        func wait(seconds: Double = 120) -> (status: Int32, seconds: Double) {
            let start = Date()
            while process.isRunning && Date().timeIntervalSince(start) < seconds { usleep(20_000) }
            if process.isRunning { process.terminate() }
            process.waitUntilExit()
            return (process.terminationStatus, Date().timeIntervalSince(start))
        }
        func waitForOutput(_ marker: String, seconds: Double = 60) -> Bool {
            let start = Date()
            while !output.contains(marker) && process.isRunning && Date().timeIntervalSince(start) < seconds { usleep(20_000) }
            return output.contains(marker)
        }
        /// The pid of the launcher itself (`ip netns exec` execs it, so it is the process we started).
        var pid: Int32 { process.processIdentifier }
    }

    func port(_ offset: Int) -> Int { 20000 + Int(getpid() % 20000) + offset }

    // MARK: tests

    /// 2 hosts x 2 ranks train the MNIST MLP to exactly the parameters of 4 ranks on one host: the same
    /// ranks, batches and reduction order, only the network differs.
    func testTwoHostsTrainLikeFourLocalRanks() throws {
        try cluster(2)
        // The ring named: auto would run two-shot on the one host (its arena) and the ring across two,
        // which sum in another order, equal only within rounding.
        let common = [Self.root + "/configs/mnist-mlp.json", "--data-dir", Self.data, "--set", "epochs=null", "--set", "max_iters=8",
                      "--set", "batch_size=12", "--set", "eval_interval=1000", "--set", "log_interval=1000", "--set", "verify_replicas=true",
                      "--set", "allreduce_algorithm=ring"]
        let local = scratchFile("\(prefix)-local4")
        let reference = try sh([Self.build + "/ddp-launch", "--nproc-per-node", "4", "--"] + common + ["--out-dir", local])
        XCTAssertEqual(reference.status, 0, reference.output)
        let remote = scratchFile("\(prefix)-hosts2x2")
        let launchers = try [1, 0].map { host in
            try Launcher(self, host: host, nodes: 2, perNode: 2, port: port(1), secret: secret, command: common + ["--out-dir", remote])
        }
        for launcher in launchers {
            let (status, _) = launcher.wait()
            XCTAssertEqual(status, 0, launcher.output)
        }
        XCTAssertTrue(launchers[1].output.contains("listen on \(address(0))"), launchers[1].output)
        XCTAssertTrue(launchers[0].output.contains("listen on \(address(1))"), launchers[0].output)
        let expected = try LoadedCheckpoint(path: local + "/ckpt.safetensors").tensors
        let got = try LoadedCheckpoint(path: remote + "/ckpt.safetensors").tensors
        XCTAssertEqual(Set(expected.keys), Set(got.keys))
        for (name, tensor) in expected {
            XCTAssertEqual(tensor.values.map(\.bitPattern), got[name]!.values.map(\.bitPattern), "\(name): 2 hosts differ from 4 local ranks")
        }
    }

    /// Hybrid layouts across hosts, 2 ranks per host: tensor parallelism within a host (ranks 2h, 2h+1),
    /// pipeline (tp 2 × pp 2, with sequence parallelism) or data parallelism (tp 2 × dp 2) across the
    /// bridge; and pp 2 × dp 2, stages across the bridge, each data pair within a host averaging through
    /// its own arena. Each ends with exactly the tensors of the same layout on 4 local ranks.
    func testHybridLayoutsAcrossTwoHostsTrainLikeFourLocalRanks() throws {
        try cluster(2)
        let common = [Self.root + "/configs/tiny-gpt.json", "--data-dir", Self.data, "--set", "n_layer=4", "--set", "max_iters=6",
                      "--set", "eval_interval=1000", "--set", "log_interval=1000", "--set", "verify_replicas=true"]
        let layouts = [("tp2-pp2-sp", ["--set", "tensor_parallel=2", "--set", "pipeline_parallel=2", "--set", "microbatches=2",
                                       "--set", "sequence_parallel=true"]),
                       ("tp2-dp2", ["--set", "tensor_parallel=2"]),
                       ("pp2-dp2", ["--set", "pipeline_parallel=2", "--set", "microbatches=2"])]
        for (index, (name, settings)) in layouts.enumerated() {
            let local = scratchFile("\(prefix)-\(name)-local4")
            let reference = try sh([Self.build + "/ddp-launch", "--nproc-per-node", "4", "--"] + common + settings + ["--out-dir", local])
            XCTAssertEqual(reference.status, 0, reference.output)
            let remote = scratchFile("\(prefix)-\(name)-hosts2x2")
            let launchers = try [1, 0].map { host in
                try Launcher(self, host: host, nodes: 2, perNode: 2, port: port(10 + index), secret: secret,
                             command: common + settings + ["--out-dir", remote])
            }
            for launcher in launchers {
                let (status, _) = launcher.wait()
                XCTAssertEqual(status, 0, "\(name): \(launcher.output)")
            }
            if name == "pp2-dp2" {
                XCTAssertTrue(launchers[1].output.contains("data parallel: 2 ranks, allreduce auto (the group has a shared arena"), launchers[1].output)
            }
            let expected = try LoadedCheckpoint(path: local + "/ckpt.safetensors").tensors
            let got = try LoadedCheckpoint(path: remote + "/ckpt.safetensors").tensors
            XCTAssertEqual(Set(expected.keys), Set(got.keys), name)
            for (tensor, values) in expected {
                XCTAssertEqual(values.values.map(\.bitPattern), got[tensor]?.values.map(\.bitPattern), "\(name) \(tensor): 2 hosts differ from 4 local ranks")
            }
        }
    }

    /// Every algorithm and collective across 3 hosts (world size 3: not a power of two), checked exactly
    /// and for bitwise-identical results on every rank.
    func testCollectivesAcrossThreeHosts() throws {
        try cluster(3)
        let launchers = try [2, 1, 0].map { host in
            try Launcher(self, host: host, nodes: 3, perNode: 1, port: port(2), secret: secret,
                         command: ["collective-check", "--counts", "0,1,7,1000,70001"])
        }
        for launcher in launchers {
            XCTAssertEqual(launcher.wait().status, 0, launcher.output)
        }
        for (i, rank) in [2, 1, 0].enumerated() { XCTAssertTrue(launchers[i].output.contains("rank \(rank): OK"), launchers[i].output) }
    }

    /// Ranks of one host reach each other through shared memory, ranks of another host (another network
    /// namespace, same kernel and /dev/shm) over TCP: a lane there would bypass the link being measured.
    func testRanksShareMemoryWithinAHostAndUseTCPAcrossHosts() throws {
        try cluster(2)
        let launchers = try [1, 0].map { host in
            try Launcher(self, host: host, nodes: 2, perNode: 2, port: port(7), secret: secret,
                         command: ["collective-check", "--report-transport", "--counts", "0,7,70001"])
        }
        for launcher in launchers { XCTAssertEqual(launcher.wait().status, 0, launcher.output) }
        let (host1, host0) = (launchers[0].output, launchers[1].output)
        XCTAssertTrue(host0.contains("transport: rank 0 shared memory [1] tcp [2-3] arena no"), host0)
        XCTAssertTrue(host0.contains("transport: rank 1 shared memory [0] tcp [2-3] arena no"), host0)
        XCTAssertTrue(host1.contains("transport: rank 2 shared memory [3] tcp [0-1] arena no"), host1)
        XCTAssertTrue(host1.contains("transport: rank 3 shared memory [2] tcp [0-1] arena no"), host1)
        XCTAssertFalse((host0 + host1).contains("TCP instead of shared memory"), "another host is no reason to log")
        for rank in 0..<4 { XCTAssertTrue((host0 + host1).contains("rank \(rank): OK"), host0 + host1) }
    }

    /// A host whose link goes down mid-allreduce: the other host's rank fails within the timeout with
    /// an error naming the lost rank and its address, its launcher reports it, and nothing is left.
    func testHostTakenDownStopsTheOtherHost() throws {
        try cluster(2)
        let timeout = 4
        let launchers = try [1, 0].map { host in
            try Launcher(self, host: host, nodes: 2, perNode: 1, port: port(3), secret: secret, timeout: timeout,
                         command: ["collective-check", "--loop", "--counts", "100000", "--algorithms", "ring"])
        }
        XCTAssertTrue(launchers[1].waitForOutput("READY"), launchers[1].output)
        try sh(["ip", "netns", "exec", namespace(1), "ip", "link", "set", "eth0", "down"])
        let (status, seconds) = launchers[1].wait(seconds: 60)
        XCTAssertNotEqual(status, 0)
        let output = launchers[1].output
        XCTAssertTrue(output.contains("rank 1 at \(address(1))") && output.contains("timed out"), output)
        // The launcher names the silent rank from the ranks' reports, and which of its own ranks exited first.
        XCTAssertTrue(output.contains("[launcher] FAILED: rank 1 (on another node) stopped responding") && output.contains("the first rank to exit was rank 0"), output)
        // Detection takes the timeout, the root-cause exchange at most a second more, teardown little.
        XCTAssertLessThan(seconds, Double(timeout) + 4, output)
        XCTAssertNotEqual(launchers[0].wait(seconds: 60).status, 0, launchers[0].output)
        for launcher in launchers { XCTAssertEqual(survivors(ofLauncher: launcher.pid), [], launcher.output) }
    }

    /// A launcher killed on one host takes its ranks with it (PR_SET_PDEATHSIG); the other host's rank
    /// sees the closed connections at once and names the lost rank and address.
    func testKilledLauncherOnOneHostStopsTheOtherAtOnce() throws {
        try cluster(2)
        let launchers = try [1, 0].map { host in
            try Launcher(self, host: host, nodes: 2, perNode: 1, port: port(4), secret: secret, timeout: 30,
                         command: ["collective-check", "--loop", "--counts", "100000", "--algorithms", "ring"])
        }
        XCTAssertTrue(launchers[1].waitForOutput("READY"), launchers[1].output)
        kill(launchers[0].pid, SIGKILL)
        let (status, seconds) = launchers[1].wait(seconds: 60)
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(launchers[1].output.contains("rank 1 at \(address(1))"), launchers[1].output)
        XCTAssertLessThan(seconds, 10, "well below the 30 s timeout: a closed connection is seen at once\n\(launchers[1].output)")
        for launcher in launchers { XCTAssertEqual(survivors(ofLauncher: launcher.pid), [], launcher.output) }
    }

    /// A launcher with another job secret: its ranks are refused by the store (and say so), the
    /// store logs the refusal, and the master's ranks time out naming the ranks that never joined.
    func testLauncherWithAnotherSecretCannotJoin() throws {
        try cluster(2)
        let intruder = try Launcher(self, host: 1, nodes: 2, perNode: 1, port: port(5), secret: String(repeating: "ab", count: 16),
                                    timeout: 4, command: ["collective-check", "--counts", "7"])
        let master = try Launcher(self, host: 0, nodes: 2, perNode: 1, port: port(5), secret: secret, timeout: 4,
                                  command: ["collective-check", "--counts", "7"])
        XCTAssertNotEqual(intruder.wait(seconds: 60).status, 0, intruder.output)
        XCTAssertNotEqual(master.wait(seconds: 60).status, 0, master.output)
        XCTAssertTrue(intruder.output.contains("does not know the job secret"), intruder.output)
        XCTAssertTrue(master.output.contains("store: refused \(address(1))"), master.output)
        XCTAssertTrue(master.output.contains("waiting for ranks 1 of 2"), master.output)
        XCTAssertFalse(master.output.contains("OK"), master.output)
        for launcher in [intruder, master] { XCTAssertEqual(survivors(ofLauncher: launcher.pid), [], launcher.output) }
    }
}

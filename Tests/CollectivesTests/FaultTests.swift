import Foundation
import TestSupport
import Rendezvous
import Transport
import XCTest

/// Real processes, real failures: no rank may hang, and every survivor names the rank at fault.
final class FaultTests: XCTestCase {
    func testKilledRankMakesEveryOtherRankFailNamingIt() throws {
        for algorithm in ["ring", "tree", "halving-doubling", "two-shot"] {
            let cluster = try LocalCluster(worldSize: 4)
            let running = try cluster.start("collective-check", ["--loop", "--algorithms", algorithm, "--counts", "262144"],
                                            extra: ["SWIFT_DDP_TIMEOUT": "10"])
            XCTAssertTrue(running.waitForOutput("READY", slots: [0, 1, 2, 3], timeout: 30), "ranks never got going: \(running.output(0))")
            kill(running.processes[1].processIdentifier, SIGKILL)
            let (outcomes, seconds) = running.wait(timeout: 30)
            XCTAssertTrue(outcomes[1].signaled)
            for rank in [0, 2, 3] {
                XCTAssertEqual(outcomes[rank].status, 3, "\(algorithm) rank \(rank): \(outcomes[rank].output)")
                XCTAssertTrue(outcomes[rank].output.contains("rank 1"), "\(algorithm) rank \(rank) does not name rank 1:\n\(outcomes[rank].output)")
            }
            if algorithm == "two-shot" {
                // Its ranks wait in the arena's meetings, where no bytes are owed: the error says what it waited for.
                XCTAssertTrue(outcomes[0].output.contains("two-shot allreduce") && outcomes[0].output.contains("connection closed by peer (peer exited"),
                              outcomes[0].output)
            }
            // A closed socket is noticed at once: far below the 10 s inactivity timeout.
            XCTAssertLessThan(seconds, 8, "\(algorithm): survivors took \(seconds) s to exit")
            print("\(algorithm): survivors exited in \(String(format: "%.3f", seconds)) s; rank 3 said: \(outcomes[3].output)")
        }
    }

    /// A rank stopped (SIGSTOP) holds its sockets open: the survivors' waits end by the inactivity
    /// timeout, on lanes and in the two-shot allreduce's meetings alike.
    func testStoppedRankIsDetectedByTimeout() throws {
        for algorithm in ["ring", "two-shot"] { try stoppedRankIsDetected(algorithm) }
    }

    func stoppedRankIsDetected(_ algorithm: String) throws {
        let cluster = try LocalCluster(worldSize: 3)
        let running = try cluster.start("collective-check", ["--loop", "--algorithms", algorithm, "--counts", "65536"],
                                        extra: ["SWIFT_DDP_TIMEOUT": "2"])
        XCTAssertTrue(running.waitForOutput("READY", slots: [0, 1, 2], timeout: 30))
        kill(running.processes[2].processIdentifier, SIGSTOP)
        defer { kill(running.processes[2].processIdentifier, SIGKILL) }
        let deadline = Deadline(seconds: 20)
        while (running.processes[0].isRunning || running.processes[1].isRunning) && !deadline.hasPassed { usleep(20_000) }
        kill(running.processes[2].processIdentifier, SIGKILL)
        let (outcomes, _) = running.wait(timeout: 10)
        for rank in [0, 1] {
            XCTAssertEqual(outcomes[rank].status, 3, "\(algorithm) rank \(rank): \(outcomes[rank].output)")
            XCTAssertTrue(outcomes[rank].output.contains("rank 2"), "\(algorithm) rank \(rank) does not name rank 2:\n\(outcomes[rank].output)")
        }
        XCTAssertTrue(outcomes[0].output.contains("timed out") || outcomes[1].output.contains("timed out"),
                      "\(algorithm): \(outcomes[0].output)\n\(outcomes[1].output)")
    }

    func testRendezvousTimeoutNamesTheMissingRanks() throws {
        let cluster = try LocalCluster(worldSize: 5)
        let running = try cluster.start("collective-check", ["--counts", "8"], ranks: [0, 2, 4], extra: ["SWIFT_DDP_TIMEOUT": "2"])
        let (outcomes, seconds) = running.wait(timeout: 30)
        for outcome in outcomes {
            XCTAssertEqual(outcome.status, 3, outcome.output)
            XCTAssertTrue(outcome.output.contains("rendezvous timed out after 2 s: waiting for ranks 1, 3 of 5"), outcome.output)
        }
        XCTAssertLessThan(seconds, 10)
    }

    func testWrongSecretCannotJoinAndTheJobStillWorks() throws {
        let cluster = try LocalCluster(worldSize: 2)
        let intruder = try cluster.start("collective-check", ["--counts", "8"], ranks: [1],
                                         extra: ["SWIFT_DDP_SECRET": String(repeating: "ab", count: 16), "SWIFT_DDP_TIMEOUT": "5"])
        let (bad, _) = intruder.wait(timeout: 30)
        XCTAssertEqual(bad[0].status, 3)
        XCTAssertTrue(bad[0].output.contains("refused"), bad[0].output)
        let job = try cluster.start("collective-check", ["--counts", "0,1,1000"])
        let (outcomes, _) = job.wait(timeout: 60)
        for (rank, outcome) in outcomes.enumerated() { XCTAssertEqual(outcome.status, 0, "rank \(rank): \(outcome.output)") }
    }
}

/// The launcher's placement table, checked from inside each rank (sched_getaffinity, get_mempolicy).
final class PlacementTests: XCTestCase {
    func testEachRankRunsWhereTheTableSays() throws {
        for (ranks, policy) in [(2, "auto"), (3, "node"), (2, "core")] {
            let (status, output, _) = try runToEnd(LocalCluster.buildDirectory + "/ddp-launch", [
                "--nproc-per-node", String(ranks), "--numa-bind", policy, "--", "collective-check", "--counts", "8", "--report-binding"])
            XCTAssertEqual(status, 0, output)
            let lines = output.split(separator: "\n").map(String.init)
            for rank in 0..<ranks {
                guard let row = lines.first(where: { $0.hasPrefix("[launcher] placement: \(rank) |") }),
                      let report = lines.first(where: { $0.contains("binding: rank \(rank) ") }) else {
                    XCTFail("rank \(rank): no table row or report in\n\(output)"); continue
                }
                let fields = row.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
                XCTAssertTrue(report.contains("cpus \(fields[2]) "), "\(policy): table says \(fields[2]), rank says: \(report)")
                // Independently of the plan: with one core per rank, rank r is on the r-th online CPU
                // (/sys/devices/system/cpu/online, read here), which the rank itself confirms.
                if policy == "core", let online = try? String(contentsOfFile: "/sys/devices/system/cpu/online", encoding: .utf8),
                   let cpus = parseCPUList(online.trimmingCharacters(in: .whitespacesAndNewlines)), ranks <= cpus.count {
                    XCTAssertTrue(report.contains("cpus \(cpus[rank]) "), "core policy: rank \(rank) should be alone on CPU \(cpus[rank]): \(report)")
                }
                if fields[3].hasPrefix("bound to node") {
                    XCTAssertTrue(report.contains("mempolicy 2 nodes \(fields[1])"), "memory not bound as the table says: \(report)")
                }
            }
        }
    }
}

/// "0-3,6" -> [0, 1, 2, 3, 6] (the kernel's CPU list format), parsed here rather than by the code under test.
func parseCPUList(_ text: String) -> [Int]? {
    var out: [Int] = []
    for part in text.split(separator: ",") {
        let bounds = part.split(separator: "-").compactMap { Int($0) }
        guard bounds.count == (part.contains("-") ? 2 : 1) else { return nil }
        out += Array(bounds[0]...(bounds.count == 2 ? bounds[1] : bounds[0]))
    }
    return out
}

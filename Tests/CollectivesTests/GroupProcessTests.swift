import Collectives
import Foundation
import Rendezvous
import TestSupport
import Transport
import XCTest

/// Sub-groups, point-to-point and all-to-all on real processes over loopback, every result exact.
final class GroupProcessTests: XCTestCase {
    func runCheck(worldSize: Int, arguments: [String], expect: [Int: String] = [:], timeout: Double = 180,
                  file: StaticString = #filePath, line: UInt = #line) throws {
        let cluster = try LocalCluster(worldSize: worldSize)
        let started = Deadline.now()
        defer { print("world \(worldSize) \(arguments.joined(separator: " ")): \(String(format: "%.1f", Deadline.now() - started)) s") }
        let outcomes = try cluster.start("collective-check", arguments).wait(timeout: timeout).outcomes
        for (rank, outcome) in outcomes.enumerated() {
            XCTAssertEqual(outcome.status, 0, "world \(worldSize) rank \(rank) failed:\n\(outcome.output)", file: file, line: line)
            XCTAssertTrue(outcome.output.contains("rank \(rank): OK"), "rank \(rank) output:\n\(outcome.output)", file: file, line: line)
            if let text = expect[rank] { XCTAssertTrue(outcome.output.contains(text), "rank \(rank) output:\n\(outcome.output)", file: file, line: line) }
        }
    }

    /// Grids 2x2, 2x4 and 4x2: every collective and algorithm on row, column and reversed-world groups,
    /// rows and columns concurrently on two threads, disjoint rows running different algorithms at once.
    func testEveryCollectiveOnSubgroupsOfGrids() throws {
        for (world, rows) in [(4, 2), (8, 2), (8, 4)] {
            try runCheck(worldSize: world, arguments: ["--mode", "groups", "--rows", String(rows), "--counts", "0,1,7,1000,70001",
                                                   "--algorithms", "ring,tree,halving-doubling,auto"],
                         expect: [0: "grid \(rows)x\(world / rows): row"])
        }
    }

    func testBFloat16RingOnSubgroups() throws {
        try runCheck(worldSize: 4, arguments: ["--mode", "groups", "--rows", "2", "--compression", "bf16", "--algorithms", "ring",
                                               "--counts", "0,7,70001"])
    }

    func testPointToPointPingPongRingShiftAndChain() throws {
        for world in [2, 4] {
            try runCheck(worldSize: world, arguments: ["--mode", "p2p"], expect: [1: "unanswered receive"])
        }
    }

    func testAllToAllVOnWorldSizes1To5And8() throws {
        for world in [1, 2, 3, 4, 5, 8] {
            try runCheck(worldSize: world, arguments: ["--mode", "alltoall"])
        }
    }

    /// With --authenticate-frames every frame carries an HMAC tag: every collective, sub-groups,
    /// point-to-point and all-to-all still give exact results.
    func testEverythingRunsWithAuthenticatedFrames() throws {
        for mode in ["collectives", "groups", "p2p", "alltoall"] {
            let (status, output, _) = try runToEnd(LocalCluster.buildDirectory + "/ddp-launch", [
                "--authenticate-frames", "--nproc-per-node", "4", "--", "collective-check", "--mode", mode, "--counts", "0,7,70001"])
            XCTAssertEqual(status, 0, "\(mode):\n\(output)")
            XCTAssertEqual(output.components(separatedBy: ": OK ").count - 1, 4, "\(mode):\n\(output)")
        }
    }

    /// kill -9 of a rank inside a sub-group collective: under the launcher every rank of the job is
    /// gone within the timeout + 2 s, the killed rank is named, nothing is left running.
    func testKilledRankInASubgroupStopsTheWholeJob() throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: LocalCluster.buildDirectory + "/ddp-launch")
        process.arguments = ["--nproc-per-node", "4", "--timeout", "5", "--", "collective-check", "--mode", "sub-group-loop",
                             "--rows", "2", "--loop", "--algorithms", "ring", "--counts", "262144"]
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let reader = OutputCollector(pipe.fileHandleForReading)
        let deadline = Deadline(seconds: 60)
        while reader.text.components(separatedBy: "READY").count - 1 < 4 && !deadline.hasPassed { usleep(20_000) }
        let head = reader.text
        let pids = launcherRankPIDs(head)
        XCTAssertEqual(pids.count, 4, head)
        guard pids.count == 4 else { process.terminate(); return }
        // Rank 3 is in the row group {2, 3}; ranks 0 and 1 run in the other row and never talk to it.
        kill(pids[3], SIGKILL)
        let killed = Deadline.now()
        process.waitUntilExit()
        let seconds = Deadline.now() - killed
        let text = reader.finish()
        XCTAssertLessThan(seconds, 5 + 2, "the job took \(seconds) s to stop:\n\(text)")
        XCTAssertTrue(text.contains("FAILED: rank 3 (pid \(pids[3])"), text)
        XCTAssertTrue(text.contains("SIGKILL"), text)
        XCTAssertEqual(survivors(ofLauncher: process.processIdentifier), [])
    }
}

/// Collects a pipe's output on a thread as it arrives.
final class OutputCollector: @unchecked Sendable {
    private let lock = NSLock()
    private var data = Data()
    private let done = DispatchSemaphore(value: 0)
    init(_ handle: FileHandle) {
        Thread.detachNewThread { [self] in
            while true {
                let chunk = handle.availableData
                if chunk.isEmpty { break }
                lock.lock(); data.append(chunk); lock.unlock()
            }
            done.signal()
        }
    }
    var text: String { lock.lock(); defer { lock.unlock() }; return String(decoding: data, as: UTF8.self) }
    func finish() -> String { _ = done.wait(timeout: .now() + 5); return text }
}

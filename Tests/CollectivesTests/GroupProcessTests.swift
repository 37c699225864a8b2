import Collectives
import Foundation
import Rendezvous
import TestSupport
import Transport
import XCTest

/// Sub-groups, point-to-point and all-to-all on real processes over loopback, every result exact.
final class GroupProcessTests: XCTestCase {
    /// Grids 2x2, 2x4 and 4x2: every collective and algorithm on row, column and reversed-world groups,
    /// rows and columns concurrently on two threads, disjoint rows running different algorithms at once.
    /// Every group has its own shared arena (two-shot, reduce-scatter and allgather through it, in 4 KiB
    /// slots so that 70001 floats take many pieces). The 2x2 grid runs with lanes off (TCP only): no
    /// arenas, so the ring's reduce-scatter and allgather run on sub-groups there.
    func testEveryCollectiveOnSubgroupsOfGrids() throws {
        for (world, rows, lanes) in [(4, 2, false), (8, 2, true), (8, 4, true)] {
            let cols = world / rows, arenas = lanes ? "yes" : "no"
            try runCollectiveCheck(worldSize: world, arguments: ["--mode", "groups", "--rows", String(rows), "--counts", "0,1,7,1000,70001",
                                                   "--algorithms", "ring,tree,halving-doubling,two-shot,auto"],
                         environment: ["SWIFT_DDP_SHM_KB": lanes ? "4" : "0"],
                         expect: [0: "grid \(rows)x\(cols): row", 1: "arenas: row \(arenas), column \(arenas), reversed \(arenas)"])
        }
    }

    func testBFloat16RingOnSubgroups() throws {
        try runCollectiveCheck(worldSize: 4, arguments: ["--mode", "groups", "--rows", "2", "--compression", "bf16", "--algorithms", "ring",
                                               "--counts", "0,7,70001"])
    }

    func testPointToPointPingPongRingShiftAndChain() throws {
        for world in [2, 4] {
            try runCollectiveCheck(worldSize: world, arguments: ["--mode", "p2p"], expect: [1: "unanswered receive"])
        }
    }

    func testAllToAllVOnWorldSizes1To5And8() throws {
        for world in [1, 2, 3, 4, 5, 8] {
            try runCollectiveCheck(worldSize: world, arguments: ["--mode", "alltoall"])
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
    /// The same with rows of 3 looping two-shot through their own arenas (the victim dies between
    /// meetings or inside one); the rows of 2 have arenas too, but the ring named runs on the lanes.
    func testKilledRankInASubgroupStopsTheWholeJob() throws {
        try killedRankInASubgroupStopsTheWholeJob(ranks: 4, algorithm: "ring")
        try killedRankInASubgroupStopsTheWholeJob(ranks: 6, algorithm: "two-shot")
    }

    func killedRankInASubgroupStopsTheWholeJob(ranks: Int, algorithm: String) throws {
        let (process, rest, head) = try startLauncher(LocalCluster.buildDirectory + "/ddp-launch", [
            "--nproc-per-node", String(ranks), "--timeout", "5", "--", "collective-check", "--mode", "sub-group-loop",
            "--rows", "2", "--loop", "--algorithms", algorithm, "--counts", "262144"], until: "READY", occurrences: ranks)
        let pids = launcherRankPIDs(head)
        XCTAssertEqual(pids.count, ranks, head)
        guard pids.count == ranks else { process.terminate(); return }
        let victim = ranks - 1
        XCTAssertTrue(head.contains("arena yes"), head)
        // The victim is in the second row; the first row's ranks never talk to it.
        kill(pids[victim], SIGKILL)
        let killed = Deadline.now()
        let text = head + String(decoding: rest.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        let seconds = Deadline.now() - killed
        XCTAssertLessThan(seconds, 5 + 2, "the job took \(seconds) s to stop:\n\(text)")
        XCTAssertTrue(text.contains("FAILED: rank \(victim) (pid \(pids[victim])"), text)
        XCTAssertTrue(text.contains("SIGKILL"), text)
        XCTAssertEqual(survivors(ofLauncher: process.processIdentifier), [])
    }
}

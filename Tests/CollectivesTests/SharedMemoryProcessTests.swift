import Foundation
import Rendezvous
import TestSupport
import XCTest

/// Ranks of one host reach each other through shared-memory lanes; a pair that cannot (lanes off on
/// one side) stays on TCP, says why, and every result is still exact. A rank killed while its peers
/// wait on a lane is covered by GroupProcessTests.testKilledRankInASubgroupStopsTheWholeJob (its ranks
/// are local, so on lanes).
final class SharedMemoryProcessTests: XCTestCase {
    func testLocalRanksReachEachOtherThroughSharedMemory() throws {
        try runCollectiveCheck(worldSize: 3, arguments: ["--report-transport", "--counts", "0,1,7,1000,300001"],
                               expect: [0: "transport: rank 0 shared memory [1-2] tcp [] arena yes",
                                        1: "transport: rank 1 shared memory [0,2] tcp [] arena yes",
                                        2: "transport: rank 2 shared memory [0-1] tcp [] arena yes"])
    }

    /// The two-shot allreduce through the arena, with slots of 4 KiB (SWIFT_DDP_SHM_KB sets them as it
    /// sets the rings), so that lengths from 0 to many pieces run, pieces alternate the arena's halves
    /// many times, and ranks meet hundreds of times; exact and bitwise identical on every rank. On 3 and
    /// 4 ranks reduce-scatter and allgather go through the arena too, in strided pieces.
    func testTwoShotAllreduceRunsThroughTheArenaInManyPieces() throws {
        for world in [2, 3, 4] {
            let cluster = try LocalCluster(worldSize: world)
            let outcomes = try cluster.start("collective-check", ["--report-transport", "--algorithms", "two-shot,auto",
                                                                  "--counts", "0,1,7,1000,1024,70001"],
                                             extra: ["SWIFT_DDP_SHM_KB": "4"]).wait(timeout: 120).outcomes
            for (rank, outcome) in outcomes.enumerated() {
                XCTAssertEqual(outcome.status, 0, "world \(world) rank \(rank):\n\(outcome.output)")
                XCTAssertTrue(outcome.output.contains("rank \(rank): OK"), "world \(world) rank \(rank):\n\(outcome.output)")
                XCTAssertTrue(outcome.output.contains("arena yes"), "world \(world) rank \(rank):\n\(outcome.output)")
            }
        }
    }

    /// SWIFT_DDP_LANE_STORES forces cached or non-temporal stores on every lane (auto, the default, is
    /// the test above): results stay exact with long messages; an unknown value names the variable.
    func testEitherKindOfLaneStoreGivesExactResults() throws {
        for stores in ["cached", "streaming"] {
            let cluster = try LocalCluster(worldSize: 2)
            let outcomes = try cluster.start("collective-check", ["--report-transport", "--counts", "7,4099,300001"], ranks: [0, 1],
                                             extra: ["SWIFT_DDP_LANE_STORES": stores]).wait(timeout: 120).outcomes
            for (rank, outcome) in outcomes.enumerated() {
                XCTAssertEqual(outcome.status, 0, "\(stores) rank \(rank):\n\(outcome.output)")
                XCTAssertTrue(outcome.output.contains("rank \(rank): OK"), "\(stores) rank \(rank):\n\(outcome.output)")
                XCTAssertTrue(outcome.output.contains("shared memory [\(1 - rank)]"), "\(stores) rank \(rank):\n\(outcome.output)")
            }
            XCTAssertEqual(try WorkerEnvironment.read(cluster.environment(rank: 0, extra: ["SWIFT_DDP_LANE_STORES": stores])).laneStores?.rawValue,
                           stores)
            XCTAssertThrowsError(try WorkerEnvironment.read(cluster.environment(rank: 0, extra: ["SWIFT_DDP_LANE_STORES": "fast"]))) { error in
                XCTAssertTrue("\(error)".contains("SWIFT_DDP_LANE_STORES") && "\(error)".contains("auto, cached, streaming"), "\(error)")
            }
        }
    }

    func testARankWithLanesOffStaysOnTCPWithItsPeersAndSaysWhy() throws {
        let cluster = try LocalCluster(worldSize: 3)
        let arguments = ["--report-transport", "--counts", "0,7,300001"]
        let lanes = try cluster.start("collective-check", arguments, ranks: [0, 1])
        let tcp = try cluster.start("collective-check", arguments, ranks: [2], extra: ["SWIFT_DDP_SHM_KB": "0"])
        let outcomes = lanes.wait(timeout: 120).outcomes + tcp.wait(timeout: 30).outcomes
        for (rank, outcome) in outcomes.enumerated() {
            XCTAssertEqual(outcome.status, 0, "rank \(rank):\n\(outcome.output)")
            XCTAssertTrue(outcome.output.contains("rank \(rank): OK"), "rank \(rank):\n\(outcome.output)")
        }
        // Not every pair on lanes: no arena, and the two-shot allreduce (in the default plan) ran as the
        // fixed rule's choice.
        XCTAssertTrue(outcomes[0].output.contains("transport: rank 0 shared memory [1] tcp [2] arena no"), outcomes[0].output)
        XCTAssertTrue(outcomes[1].output.contains("transport: rank 1 shared memory [0] tcp [2] arena no"), outcomes[1].output)
        XCTAssertTrue(outcomes[2].output.contains("transport: rank 2 shared memory [] tcp [0-1] arena no"), outcomes[2].output)
        // Rank 2 offered nothing to its lower ranks: they say which rank and why.
        XCTAssertTrue(outcomes[0].output.contains("TCP instead of shared memory with rank 2 (rank 2: turned off (SWIFT_DDP_SHM_KB=0))"),
                      outcomes[0].output)
        XCTAssertThrowsError(try WorkerEnvironment.read(cluster.environment(rank: 0, extra: ["SWIFT_DDP_SHM_KB": "3"]))) { error in
            XCTAssertTrue("\(error)".contains("SWIFT_DDP_SHM_KB"), "\(error)")
        }
        XCTAssertEqual(try WorkerEnvironment.read(cluster.environment(rank: 0, extra: ["SWIFT_DDP_SHM_KB": "256"])).sharedMemoryRingBytes,
                       256 << 10)
    }
}

import XCTest

/// The pipelined GPT on real ranks against one rank (collective-check --mode pipeline): every
/// schedule the stages run, at p 2 and p 4 (oversubscribed here: correctness only), m = p and 2p,
/// interleaved with 2 chunks per rank, zb-h1 with its split backward; a bad combination is refused
/// naming the key.
final class PipelineProcessTests: XCTestCase {
    func testEveryScheduleMatchesOneRankOnRealRanks() throws {
        for (world, schedule, chunks) in [(2, "gpipe", 1), (2, "1f1b", 1), (2, "interleaved", 2), (2, "zb-h1", 1),
                                         (4, "gpipe", 1), (4, "1f1b", 1), (4, "interleaved", 2), (4, "zb-h1", 1)] {
            for m in [world, 2 * world] {
                try runCollectiveCheck(worldSize: world, arguments: ["--mode", "pipeline", "--schedule", schedule, "--microbatches", "\(m)",
                                                                     "--virtual-stages", "\(chunks)"], timeout: 120)
            }
        }
    }

    func testTooFewMicrobatchesAreRefusedNamingTheKey() throws {
        let cluster = try LocalCluster(worldSize: 2)
        let outcomes = try cluster.start("collective-check", ["--mode", "pipeline", "--schedule", "zb-h1", "--microbatches", "1"]).wait(timeout: 60).outcomes
        for outcome in outcomes {
            XCTAssertNotEqual(outcome.status, 0)
            XCTAssertTrue(outcome.output.contains("microbatches: 1 is fewer than pipeline_parallel 2"), outcome.output)
        }
    }
}

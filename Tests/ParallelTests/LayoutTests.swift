import Parallel
import XCTest

/// The layout is pure: checked on fixtures (Megatron's own examples) without sockets.
final class LayoutTests: XCTestCase {
    func testSixteenRanksTensorTwoPipelineFour() throws {
        let layout = try ParallelLayout(worldSize: 16, tensorParallel: 2, pipelineParallel: 4)
        XCTAssertEqual(layout.dataParallel, 2)
        XCTAssertEqual(layout.members(.tensor, of: 0), [0, 1])
        XCTAssertEqual(layout.members(.pipeline, of: 0), [0, 4, 8, 12])
        XCTAssertEqual(layout.members(.data, of: 0), [0, 2])
        XCTAssertEqual(layout.groups(.tensor), [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11], [12, 13], [14, 15]])
        XCTAssertEqual(layout.groups(.data), [[0, 2], [1, 3], [4, 6], [5, 7], [8, 10], [9, 11], [12, 14], [13, 15]])
        XCTAssertEqual(layout.groups(.pipeline), [[0, 4, 8, 12], [1, 5, 9, 13], [2, 6, 10, 14], [3, 7, 11, 15]])
        XCTAssertEqual(layout.members(.model, of: 5), [0, 1, 4, 5, 8, 9, 12, 13])
        XCTAssertEqual(layout.coordinates(of: 13), .init(tensor: 1, data: 0, pipeline: 3, expert: 0, expertData: 0))
    }

    func testExpertGroupsAreCarvedOutOfTheDataGroup() throws {
        // Megatron, world 8, ep 2: expert groups [0,1],[2,3],...; expert-data groups [0,2,4,6],[1,3,5,7].
        let layout = try ParallelLayout(worldSize: 8, expertParallel: 2, experts: 4)
        XCTAssertEqual(layout.groups(.expert), [[0, 1], [2, 3], [4, 5], [6, 7]])
        XCTAssertEqual(layout.groups(.expertData), [[0, 2, 4, 6], [1, 3, 5, 7]])
        // With tensor parallelism the expert groups stay inside one data group (same tensor index).
        let mixed = try ParallelLayout(worldSize: 8, tensorParallel: 2, expertParallel: 2)
        XCTAssertEqual(mixed.groups(.data), [[0, 2, 4, 6], [1, 3, 5, 7]])
        XCTAssertEqual(mixed.groups(.expert), [[0, 2], [1, 3], [4, 6], [5, 7]])
        XCTAssertEqual(mixed.groups(.expertData), [[0, 4], [1, 5], [2, 6], [3, 7]])
    }

    /// For many layouts: every axis partitions the world into groups of the axis's size, coordinates
    /// round-trip, and a group's members differ only along its own axis.
    func testEveryAxisPartitionsTheWorld() throws {
        for world in [1, 2, 4, 6, 8, 12, 16, 24] {
            for tp in [1, 2, 3, 4] where world % tp == 0 {
                for pp in [1, 2, 4] where world % (tp * pp) == 0 {
                    for ep in [1, 2] where (world / (tp * pp)) % ep == 0 {
                        let layout = try ParallelLayout(worldSize: world, tensorParallel: tp, pipelineParallel: pp, expertParallel: ep)
                        let sizes: [ParallelLayout.Axis: Int] = [.tensor: tp, .pipeline: pp, .data: layout.dataParallel, .expert: ep,
                                                                .expertData: layout.expertDataParallel, .model: tp * pp]
                        for (axis, size) in sizes {
                            let groups = layout.groups(axis)
                            XCTAssertEqual(groups.flatMap { $0 }.sorted(), Array(0..<world), "\(layout) \(axis)")
                            XCTAssertTrue(groups.allSatisfy { $0.count == size }, "\(layout) \(axis): \(groups)")
                            for g in groups { for r in g { XCTAssertEqual(layout.members(axis, of: r), g) } }
                        }
                        for r in 0..<world {
                            let c = layout.coordinates(of: r)
                            XCTAssertEqual(layout.rank(tensor: c.tensor, data: c.data, pipeline: c.pipeline), r)
                            XCTAssertEqual(c.data, c.expert + ep * c.expertData)
                            for peer in layout.members(.tensor, of: r) {
                                let d = layout.coordinates(of: peer)
                                XCTAssertEqual([d.data, d.pipeline], [c.data, c.pipeline])
                            }
                            // Groups of different axes share exactly this rank (safe to use from different threads).
                            XCTAssertEqual(Set(layout.members(.tensor, of: r)).intersection(layout.members(.data, of: r)), [r])
                            XCTAssertEqual(Set(layout.members(.data, of: r)).intersection(layout.members(.pipeline, of: r)), [r])
                        }
                    }
                }
            }
        }
    }

    func testInvalidLayoutsAreRefusedNamingTheKey() {
        func refusal(_ body: () throws -> ParallelLayout) -> String {
            do { _ = try body(); return "accepted" } catch { return "\(error)" }
        }
        XCTAssertEqual(refusal { try ParallelLayout(worldSize: 16, tensorParallel: 3) },
                       "tensor_parallel: tensor_parallel 3 × pipeline_parallel 1 does not divide the world size 16")
        XCTAssertEqual(refusal { try ParallelLayout(worldSize: 8, tensorParallel: 4, heads: 6) },
                       "tensor_parallel: 4 does not divide n_head 6")
        XCTAssertEqual(refusal { try ParallelLayout(worldSize: 8, tensorParallel: 2, pipelineParallel: 2, expertParallel: 4) },
                       "expert_parallel: 4 does not divide the data-parallel size 2 (world 8 / (tensor_parallel 2 × pipeline_parallel 2))")
        XCTAssertEqual(refusal { try ParallelLayout(worldSize: 8, expertParallel: 4, experts: 6) },
                       "expert_parallel: 4 does not divide n_experts 6")
        XCTAssertEqual(refusal { try ParallelLayout(worldSize: 8, pipelineParallel: 0) }, "pipeline_parallel: must be at least 1, not 0")
    }
}

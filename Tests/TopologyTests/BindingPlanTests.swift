import Topology
import XCTest

/// The placement policy on fixture topologies (no hardware needed).
final class BindingPlanTests: XCTestCase {
    func node(_ id: Int, _ cpus: [Int]) -> NumaTopology.Node { .init(id: id, cpus: cpus, memoryMiB: 1024) }

    func testThisMachineOneNodeTwoCPUs() {
        let t = NumaTopology(nodes: [node(0, [0, 1])])
        XCTAssertEqual(planBinding(t, localRanks: 2, policy: .auto).map(\.cpus), [[0], [1]])
        XCTAssertEqual(planBinding(t, localRanks: 2, policy: .node).map(\.cpus), [[0, 1], [0, 1]])
        XCTAssertEqual(planBinding(t, localRanks: 1, policy: .core).map(\.cpus), [[0, 1]])
        XCTAssertTrue(planBinding(t, localRanks: 2, policy: .auto).allSatisfy { $0.node == 0 && $0.bindMemory })
        XCTAssertTrue(planBinding(t, localRanks: 2, policy: .none).allSatisfy { $0.cpus.isEmpty && $0.node == nil && !$0.bindMemory })
    }

    func testTwoSocketsTwoNodesEachEightCPUs() {
        let t = NumaTopology(nodes: (0..<4).map { node($0, Array(($0 * 8)..<($0 * 8 + 8))) })
        let plan = planBinding(t, localRanks: 8, policy: .auto)
        XCTAssertEqual(plan.map(\.node), [0, 0, 1, 1, 2, 2, 3, 3], "ranks spread over nodes in contiguous pairs")
        XCTAssertEqual(plan[0].cpus, [0, 1, 2, 3]); XCTAssertEqual(plan[1].cpus, [4, 5, 6, 7]); XCTAssertEqual(plan[7].cpus, [28, 29, 30, 31])
        XCTAssertEqual(Set(plan.flatMap(\.cpus)).count, 32, "no CPU shared")
        XCTAssertEqual(planBinding(t, localRanks: 2, policy: .core).map(\.node), [0, 2], "two ranks land on different sockets' nodes")
    }

    func testEightNodesFewerRanksThanNodes() {
        let t = NumaTopology(nodes: (0..<8).map { node($0, [$0 * 2, $0 * 2 + 1]) })
        let plan = planBinding(t, localRanks: 3, policy: .auto)
        XCTAssertEqual(plan.map(\.node), [0, 2, 5], "evenly spaced over the nodes")
        XCTAssertEqual(plan.map(\.cpus), [[0, 1], [4, 5], [10, 11]])
    }

    func testMoreRanksThanCPUsShareTheNode() {
        let t = NumaTopology(nodes: [node(0, [0, 1])])
        let plan = planBinding(t, localRanks: 8, policy: .auto)
        XCTAssertEqual(plan.count, 8)
        XCTAssertTrue(plan.allSatisfy { $0.cpus == [0, 1] && $0.node == 0 })
        XCTAssertTrue(planBinding(t, localRanks: 3, policy: .core).allSatisfy { $0.cpus == [0, 1] }, "core cannot split 2 CPUs 3 ways")
    }

    func testCPUsWithGapsAndUnavailableNUMA() {
        let t = NumaTopology(nodes: [node(0, [0, 2, 3, 7]), node(1, [8, 9, 12, 13])], numaAvailable: false)
        let plan = planBinding(t, localRanks: 4, policy: .core)
        XCTAssertEqual(plan.map(\.cpus), [[0, 2], [3, 7], [8, 9], [12, 13]])
        XCTAssertTrue(plan.allSatisfy { !$0.bindMemory }, "no memory binding when libnuma says NUMA is unavailable")
        XCTAssertTrue(placementTable(plan, rankOffset: 0, numaAvailable: false).last!.contains("warning"))
        XCTAssertEqual(compactList([0, 2, 3, 7, 8, 9, 12, 13]), "0,2-3,7-9,12-13")
        XCTAssertEqual(parseList("0,2-3,7-9"), [0, 2, 3, 7, 8, 9])
        XCTAssertNil(parseList("3-1"))
    }

    func testTopologyOfThisMachineIsReadable() {
        let t = NumaTopology.current()
        XCTAssertFalse(t.nodes.isEmpty)
        XCTAssertEqual(Set(t.nodes.flatMap(\.cpus)), Set(currentAffinity()))
    }
}

import Rendezvous
import Tensors

/// A process group whose collectives sit on the critical path (forward and backward wait for them):
/// it counts the floats they move, the seconds they take and the calls since `resetCounters`.
public class CountingGroup {
    public let group: ProcessGroup
    public private(set) var floats = 0
    public private(set) var seconds = 0.0
    public private(set) var calls = 0

    public init(group: ProcessGroup) { self.group = group }

    public var rank: Int { group.rank }
    public var size: Int { group.worldSize }

    public func resetCounters() { floats = 0; seconds = 0; calls = 0 }

    func counted(_ count: Int, _ body: () throws -> Void) throws {
        let start = monotonicSeconds()
        defer { floats += count; calls += 1; seconds += monotonicSeconds() - start }
        try body()
    }
}

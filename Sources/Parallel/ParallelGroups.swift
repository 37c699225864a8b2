import Collectives
import Rendezvous

/// This rank's process groups for a layout, formed from the world group (every rank calls it; all
/// ranks form the groups in the same order). Groups along different axes share at most one rank, so
/// calls on, say, the tensor and the data group may run at the same time on different threads.
public struct ParallelGroups {
    public let layout: ParallelLayout
    public let world: ProcessGroup
    public let tensor: ProcessGroup
    public let data: ProcessGroup
    public let pipeline: ProcessGroup
    public let expert: ProcessGroup
    public let expertData: ProcessGroup
    public var coordinates: ParallelLayout.Coordinates { layout.coordinates(of: world.rank) }

    public init(layout: ParallelLayout, world: ProcessGroup) throws {
        precondition(world.worldSize == layout.worldSize && world.id == 0, "a layout of \(layout.worldSize) over a world of \(world.worldSize)")
        self.layout = layout; self.world = world
        func form(_ axis: ParallelLayout.Axis) throws -> ProcessGroup {
            let members = layout.members(axis, of: world.rank)
            // Color: the group's lowest rank (unique per group of this axis); key: position in the group.
            guard let group = try world.split(color: members.min()!, key: members.firstIndex(of: world.rank)!) else {
                preconditionFailure("rank \(world.rank) left out of its own \(axis) group")
            }
            return group
        }
        tensor = try form(.tensor); data = try form(.data); pipeline = try form(.pipeline)
        expert = try form(.expert); expertData = try form(.expertData)
        // The groups that reduce get their own arena when their ranks (2 or more) share a host (every
        // rank sets up its tensor group's, then its data group's, then under expert parallelism its
        // expert-data group's, which averages the experts' gradients: no two set-ups wait on each other).
        arenaDeclined = [try tensor.attachArena(), try data.attachArena(),
                         layout.expertParallel > 1 ? try expertData.attachArena() : nil].compactMap { $0 }.first
    }

    /// Why a group that reduces (tensor, data, expert-data) whose ranks share a host has no arena (a full
    /// /dev/shm), for a line.
    public private(set) var arenaDeclined: String?
}

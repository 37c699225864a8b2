import Rendezvous
import Transport

// Forming sub-groups. Every member of the parent group calls the same forming call in the same order
// (as MPI_Comm_split and torch.distributed.new_group require). The members allgather (color, key, the
// highest group id each has seen); ranks of one color form a group ordered by (key, parent rank), and
// the new group's id is one more than the highest id any member of the parent has seen. Two groups
// that share a connection share two ranks, and each of those ranks saw the older group's id before
// the newer one was formed, so their ids differ; disjoint groups formed by one split share an id,
// which is safe because no connection carries both.

/// Group ids are 12 bits of a frame's tag: at most this many groups per job.
public let maximumGroupID: UInt32 = 0xFFF

public struct GroupError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

extension ProcessGroup {
    /// MPI_Comm_split: ranks that pass the same `color` form one group, ordered by `key` (ties by
    /// their rank here); `color: nil` (MPI_UNDEFINED) joins none and returns nil. Collective over
    /// this group.
    public func split(color: Int?, key: Int) throws -> ProcessGroup? {
        let mine: [Int64] = [color.map { Int64($0) } ?? -1, color == nil ? 0 : 1, Int64(key), Int64(lastGroupID)]
        let all = try allgather(mine, group: self)
        let highest = all.map { UInt32($0[3]) }.max() ?? 0
        guard highest < maximumGroupID else {
            throw GroupError("\(name): cannot form another process group: all \(maximumGroupID) group ids are taken")
        }
        let id = highest + 1
        noteGroupID(id)
        guard let color else { return nil }
        let members = all.indices.filter { all[$0][1] == 1 && all[$0][0] == Int64(color) }
            .sorted { (all[$0][2], $0) < (all[$1][2], $1) }
            .map { self.members[$0] }
        return ProcessGroup(carvedFrom: self, members: members, id: id)
    }

    /// Gives this sub-group the shared arena its collectives run through (two-shot allreduce,
    /// reduce-scatter and allgather) when it has 2 or more ranks, all on one host, and does not share
    /// the world's already: collective over the group. An arena costs 2 slots per rank of /dev/shm, so
    /// only groups that reduce call it (the layouts' tensor and data groups). Returns why not when its
    /// ranks share a host and still have none.
    @discardableResult
    public func attachArena() throws -> String? {
        guard worldSize > 1, arena == nil, id != 0 else { return nil }
        return try formArena()
    }

    /// torch.distributed.new_group: a group of the listed ranks of this group, in that order. Every rank
    /// of this group calls it with the same list; those not listed get nil.
    public func subgroup(ranks: [Int]) throws -> ProcessGroup? {
        precondition(Set(ranks).count == ranks.count && ranks.allSatisfy { $0 >= 0 && $0 < worldSize },
                     "subgroup ranks \(ranks) must be distinct ranks of a group of \(worldSize)")
        let position = ranks.firstIndex(of: rank)
        return try split(color: position == nil ? nil : 0, key: position ?? 0)
    }
}

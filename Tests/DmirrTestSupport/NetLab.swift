import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// Separate hosts on one machine, for the fault campaigns: each host is a network namespace with one address on a
/// bridge that lives in a namespace of its own (the "switch"), so a test can cut a host off, split the hosts into
/// groups, or limit a host's bandwidth, and real processes (agents, rsync daemons) see real packet loss, not a
/// refused loopback connection.
///
/// Links are cut with blackhole routes inside the hosts: packets to a blocked address are dropped silently, as a
/// network split would, and established TCP connections stall rather than reset. Bandwidth is limited with `tc tbf`
/// on the host's interface (this kernel has no `netem`; latency and loss need a userspace proxy, not built yet).
///
/// Names carry this process's pid: ``init(tag:)`` first removes namespaces a crashed earlier test process left, and
/// ``close()`` (also run at `deinit`) removes every namespace this lab made. Processes started inside are the test's
/// to kill, by pid, before ``close()``. Without `ip netns` (not root, no kernel support) `init` throws: a campaign that
/// needs hosts fails loudly instead of passing without them.
public final class NetLab: @unchecked Sendable {
    public struct Host: Sendable, Hashable {
        public var name: String
        /// The network namespace (`ip netns exec NAMESPACE …`).
        public var namespace: String
        public var address: String
        /// Wraps a command so that it runs inside this host.
        public var wrapper: [String] { ["/usr/sbin/ip", "netns", "exec", namespace] }
    }

    public let prefix: String
    private let switchNamespace: String
    private var namespaces: [String] = []
    public private(set) var hosts: [String: Host] = [:]
    /// Blocked (from, to) address pairs, to heal them.
    private var blocked: Set<[String]> = []
    private var closed = false
    private static let subnet = "10.77.0"

    /// - Parameter tag: a few letters naming the test, part of every namespace name (kept short: interface names have
    ///   15 characters).
    public init(tag: String) throws {
        Self.removeLeftovers()
        prefix = "dmt\(getpid())\(tag.prefix(3))"
        switchNamespace = prefix + "-sw"
        do {
            try Self.ip(["netns", "add", switchNamespace])
        } catch {
            throw TestFailure("this test needs separate hosts and network namespaces are unavailable here (root and `ip netns` are required): \(error)")
        }
        namespaces.append(switchNamespace)
        try Self.ip(["-n", switchNamespace, "link", "add", "br0", "type", "bridge"])
        try Self.ip(["-n", switchNamespace, "link", "set", "br0", "up"])
        try Self.ip(["-n", switchNamespace, "link", "set", "lo", "up"])
    }

    /// Adds a host with the next free address of 10.77.0.0/24 (the switch side of its link is `v-NAME`).
    @discardableResult
    public func add(_ name: String) throws -> Host {
        precondition(hosts[name] == nil && hosts.count < 200, "host \(name) twice, or too many hosts")
        let namespace = "\(prefix)-\(name)"
        let address = "\(Self.subnet).\(hosts.count + 2)"
        let outer = "v\(hosts.count)"
        try Self.ip(["netns", "add", namespace])
        namespaces.append(namespace)
        try Self.ip(["-n", switchNamespace, "link", "add", outer, "type", "veth", "peer", "name", "eth0", "netns", namespace])
        try Self.ip(["-n", switchNamespace, "link", "set", outer, "master", "br0", "up"])
        try Self.ip(["-n", namespace, "addr", "add", "\(address)/24", "dev", "eth0"])
        try Self.ip(["-n", namespace, "link", "set", "eth0", "up"])
        try Self.ip(["-n", namespace, "link", "set", "lo", "up"])
        let host = Host(name: name, namespace: namespace, address: address)
        hosts[name] = host
        return host
    }

    public func host(_ name: String) -> Host {
        guard let host = hosts[name] else { preconditionFailure("no host \(name) in this lab") }
        return host
    }

    /// Drops every packet from `a` to `b` and from `b` to `a`.
    public func cut(_ a: String, _ b: String) throws {
        for (from, to) in [(a, b), (b, a)] where blocked.insert([from, to]).inserted {
            try Self.ip(["-n", host(from).namespace, "route", "add", "blackhole", host(to).address + "/32"])
        }
    }

    public func heal(_ a: String, _ b: String) throws {
        for (from, to) in [(a, b), (b, a)] where blocked.remove([from, to]) != nil {
            try Self.ip(["-n", host(from).namespace, "route", "del", "blackhole", host(to).address + "/32"])
        }
    }

    /// Splits the hosts: every pair in different groups is cut. Hosts in no group keep every link.
    public func split(_ groups: [[String]]) throws {
        for (i, group) in groups.enumerated() {
            for other in groups[(i + 1)...] {
                for a in group { for b in other { try cut(a, b) } }
            }
        }
    }

    /// Cuts `name` off from every other host.
    public func isolate(_ name: String) throws {
        for other in hosts.keys.sorted() where other != name { try cut(name, other) }
    }

    /// Heals every cut.
    public func healAll() throws {
        for pair in blocked.sorted(by: { $0.joined() < $1.joined() }) {
            try Self.ip(["-n", host(pair[0]).namespace, "route", "del", "blackhole", host(pair[1]).address + "/32"])
        }
        blocked.removeAll()
    }

    /// Whether `from` can reach `to` now (no cut between them).
    public func linked(_ from: String, _ to: String) -> Bool { !blocked.contains([from, to]) }

    /// Limits what `name` sends to `kbit` kilobits per second (`tc tbf` on its interface); nil removes the limit.
    public func limit(_ name: String, kbit: Int?) throws {
        let ns = host(name).namespace
        if let kbit {
            try Self.run(["/usr/sbin/ip", "netns", "exec", ns, "/usr/sbin/tc", "qdisc", "replace", "dev", "eth0", "root", "tbf",
                          "rate", "\(kbit)kbit", "burst", "\(max(16, kbit / 50))kbit", "latency", "400ms"])
        } else {
            try Self.run(["/usr/sbin/ip", "netns", "exec", ns, "/usr/sbin/tc", "qdisc", "del", "dev", "eth0", "root"])
        }
    }

    /// Removes every namespace this lab made (their interfaces go with them).
    public func close() {
        guard !closed else { return }
        closed = true
        for namespace in namespaces.reversed() { _ = try? Self.ip(["netns", "del", namespace]) }
    }

    deinit { close() }

    /// Namespaces named by a test process that no longer runs.
    static func removeLeftovers() {
        guard let list = try? Self.run(["/usr/sbin/ip", "netns", "list"]) else { return }
        for line in list.split(separator: "\n") {
            let name = String(line.split(separator: " ").first ?? "")
            guard name.hasPrefix("dmt"), let pid = Int32(name.dropFirst(3).prefix(while: \.isNumber)), pid != getpid(),
                kill(pid, 0) != 0
            else { continue }
            _ = try? Self.ip(["netns", "del", name])
        }
    }

    @discardableResult
    static func ip(_ arguments: [String]) throws -> String { try run(["/usr/sbin/ip"] + arguments) }

    @discardableResult
    static func run(_ command: [String]) throws -> String {
        let r = try CLI.run(command[0], Array(command.dropFirst()), timeout: 20)
        guard r.exitCode == 0 else {
            throw TestFailure("`\(command.joined(separator: " "))` exited \(r.exitCode): \(r.stderr.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
        return r.stdout
    }
}

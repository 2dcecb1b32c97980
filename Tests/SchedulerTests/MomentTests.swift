import HangarScheduler
import Testing

@Suite("Moment: an instant kept in a layout known at compile time")
struct MomentTests {
    @Test("an instant converts to a moment and back exactly, before and after the origin, and order is kept")
    func roundTrip() {
        let now = ContinuousClock.now
        let offsets: [Duration] = [
            .zero, .nanoseconds(1), .nanoseconds(-1), .milliseconds(250), .seconds(-3600), .seconds(86_400 * 365),
            .seconds(1) / 3,
        ]
        let instants = offsets.map { now + $0 }
        for instant in instants {
            #expect(Moment(instant).instant == instant)
        }
        for a in instants {
            for b in instants {
                #expect((Moment(a) < Moment(b)) == (a < b))
                #expect((Moment(a) == Moment(b)) == (a == b))
            }
        }
    }

    @Test("the property wrappers read back what was stored")
    func wrappers() {
        struct Holder {
            @StoredAsMoment var at: ContinuousClock.Instant
            @StoredAsOptionalMoment var maybe: ContinuousClock.Instant? = nil
        }
        let start = ContinuousClock.now
        var holder = Holder(at: start)
        #expect(holder.at == start)
        #expect(holder.maybe == nil)
        holder.at = start + .seconds(5)
        holder.maybe = start - .seconds(2)
        #expect(holder.at == start + .seconds(5))
        #expect(holder.maybe == start - .seconds(2))
        holder.maybe = nil
        #expect(holder.maybe == nil)
    }
}

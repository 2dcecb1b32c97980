/*
 * The agent's frame decoder: the only code that reads bytes the node sent. Fuzzed by
 * scripts/fuzz-agent (Fuzz/SandboxAgent/fuzz_frame.c).
 */
#include <stdio.h>
#include <string.h>

#include "agent.h"

/* Reads a varint at *at (< end); 0 on success. */
static int read_varint(const uint8_t **at, const uint8_t *end, uint64_t *value) {
    uint64_t result = 0;
    for (unsigned shift = 0; shift < 64; shift += 7) {
        if (*at >= end) return -1;
        uint8_t byte = *(*at)++;
        result |= (uint64_t)(byte & 0x7f) << shift;
        if (!(byte & 0x80)) {
            *value = result;
            return 0;
        }
    }
    return -1;
}

/*
 * Walks `length` bytes of wire format of a message of `descriptor`: every field well formed, and no
 * string field (at any depth) holding a NUL byte. `depth` bounds the recursion. 0 when fine, else
 * fills `error`.
 */
static int check_wire(
    const ProtobufCMessageDescriptor *descriptor, const uint8_t *at, size_t length, int depth, char *error,
    size_t error_size
) {
    if (depth > 8) {
        snprintf(error, error_size, "messages nested too deep");
        return -1;
    }
    const uint8_t *end = at + length;
    while (at < end) {
        uint64_t key;
        const uint8_t *key_start = at;
        if (read_varint(&at, end, &key) != 0) {
            snprintf(error, error_size, "a malformed field key");
            return -1;
        }
        /* Field numbers are at most 2^29 - 1, a key at most 5 bytes (protobuf-c 1.4 shifts a longer
         * one past an int). */
        if (at - key_start > 5 || (key >> 3) > 0x1fffffff || (key >> 3) == 0) {
            snprintf(error, error_size, "a field key out of range");
            return -1;
        }
        uint32_t tag = (uint32_t)(key >> 3);
        unsigned type = (unsigned)(key & 7);
        uint64_t value;
        switch (type) {
        case 0:
            if (read_varint(&at, end, &value) != 0) {
                snprintf(error, error_size, "a malformed varint in field %u", tag);
                return -1;
            }
            break;
        case 1:
        case 5: {
            size_t size = type == 1 ? 8 : 4;
            if ((size_t)(end - at) < size) {
                snprintf(error, error_size, "field %u is cut short", tag);
                return -1;
            }
            at += size;
            break;
        }
        case 2: {
            if (read_varint(&at, end, &value) != 0 || value > (uint64_t)(end - at)) {
                snprintf(error, error_size, "field %u has a bad length", tag);
                return -1;
            }
            const ProtobufCFieldDescriptor *field =
                descriptor ? protobuf_c_message_descriptor_get_field(descriptor, tag) : NULL;
            if (field && field->type == PROTOBUF_C_TYPE_STRING && memchr(at, 0, (size_t)value)) {
                snprintf(error, error_size, "string field \"%s\" contains a NUL byte", field->name);
                return -1;
            }
            if (field && field->type == PROTOBUF_C_TYPE_MESSAGE &&
                check_wire(field->descriptor, at, (size_t)value, depth + 1, error, error_size) != 0)
                return -1;
            at += value;
            break;
        }
        default:
            snprintf(error, error_size, "field %u has wire type %u, which is not supported", tag, type);
            return -1;
        }
    }
    return 0;
}

/* The request id, when the body starts with (or anywhere holds) a well-formed field 1 varint. */
static uint64_t find_id(const uint8_t *at, size_t length) {
    const uint8_t *end = at + length;
    while (at < end) {
        uint64_t key, value;
        if (read_varint(&at, end, &key) != 0) return 0;
        switch (key & 7) {
        case 0:
            if (read_varint(&at, end, &value) != 0) return 0;
            if ((key >> 3) == 1) return value;
            break;
        case 1:
            if (end - at < 8) return 0;
            at += 8;
            break;
        case 5:
            if (end - at < 4) return 0;
            at += 4;
            break;
        case 2:
            if (read_varint(&at, end, &value) != 0 || value > (uint64_t)(end - at)) return 0;
            at += value;
            break;
        default:
            return 0;
        }
    }
    return 0;
}

AgentDecoded agent_decode_frame(const uint8_t *body, size_t length) {
    AgentDecoded decoded = {0};
    if (length > AGENT_MAX_FRAME) {
        snprintf(decoded.error, sizeof decoded.error, "a %zu-byte frame, more than the %u allowed", length,
                 AGENT_MAX_FRAME);
        return decoded;
    }
    decoded.id = find_id(body, length);
    if (check_wire(&hangar__v1__agent_request__descriptor, body, length, 0, decoded.error, sizeof decoded.error) != 0)
        return decoded;
    decoded.request = hangar__v1__agent_request__unpack(NULL, length, body);
    if (!decoded.request) {
        snprintf(decoded.error, sizeof decoded.error, "the frame is not an AgentRequest");
        return decoded;
    }
    decoded.id = decoded.request->id;
    return decoded;
}

void agent_free_request(Hangar__V1__AgentRequest *request) {
    if (request) hangar__v1__agent_request__free_unpacked(request, NULL);
}

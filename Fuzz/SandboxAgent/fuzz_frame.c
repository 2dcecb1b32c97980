/*
 * libFuzzer target for the sandbox agent's frame decoder (Sources/SandboxAgent/frame.c): every
 * input is one frame body. Decoding must never crash, leak or read out of bounds; a body it accepts
 * must pack back into a body that decodes again (the request it handed on is whole).
 */
#include <stdlib.h>
#include <string.h>

#include "agent.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    AgentDecoded decoded = agent_decode_frame(data, size);
    if (!decoded.request) {
        if (!memchr(decoded.error, 0, sizeof decoded.error) || decoded.error[0] == 0) abort();
        return 0;
    }
    size_t packed_size = hangar__v1__agent_request__get_packed_size(decoded.request);
    uint8_t *packed = malloc(packed_size ? packed_size : 1);
    if (!packed) abort();
    if (hangar__v1__agent_request__pack(decoded.request, packed) != packed_size) abort();
    AgentDecoded again = agent_decode_frame(packed, packed_size);
    if (!again.request || again.id != decoded.id || again.request->op_case != decoded.request->op_case) abort();
    agent_free_request(again.request);
    agent_free_request(decoded.request);
    free(packed);
    return 0;
}

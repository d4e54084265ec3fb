//! Cross-principal: envelopes, subscriptions, output, attribution and handler scoping.

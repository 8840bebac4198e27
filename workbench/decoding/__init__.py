"""Decoding, in one place: the static-cache decoder (:mod:`.static`), prompt KV caches kept across calls and scoring on
them (:mod:`.prompt_states`), and forward passes started at a layer (:mod:`.from_layer`)."""

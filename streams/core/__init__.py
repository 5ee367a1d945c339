"""The pure detection core: no Faust, no Kafka, no clock, no I/O. Live and replay both call it."""

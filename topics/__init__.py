"""Data contracts of frwatch's Kafka topics: one module per topic, plus the topic catalog."""

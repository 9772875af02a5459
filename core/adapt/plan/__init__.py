"""`adapt plan`: memory counted on a meta-device model before any weight loads, per device, with advice."""

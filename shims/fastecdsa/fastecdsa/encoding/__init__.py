"""Key encodings: SEC1 (raises) and the integer helper libp2p uses."""

import busgate

# Subscribe, publish, and print what arrives (README.md shows this file).
with busgate.connect() as bus:          # $BUSGATE_SOCKET or busgated's socket
    bus.subscribe("prices", "café au lait")
    bus.publish("prices", "café au lait", b"\x00binary\n", image=True)
    for event in bus.events(timeout=5):  # Data, Notification, BusState, Link...
        if isinstance(event, busgate.Data):
            print(event.feed, event.topic, event.is_image, event.packets[0].data)
            break

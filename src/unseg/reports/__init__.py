"""What people look at: Markdown and HTML reports, overlay pictures, audit galleries, one image's trail."""

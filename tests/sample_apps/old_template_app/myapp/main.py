from myapp.app import controller

# Expose for WSGI
app = controller.app
